// The HTTP answer decides what the Broker does next: 400 drops the event for good, 503 and 500 redeliver it.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ContractError, TransientError, httpStatusOf } from '../errors.ts';

describe('httpStatusOf', () => {
  it('answers 400 for a contract violation, so the Broker does not redeliver it', () => {
    const err = new ContractError('INVALID_FIELD', 'data.placement.runtimeUrl', 'must match pattern "^https?://"');
    assert.equal(httpStatusOf(err), 400);
    assert.equal(err.message, 'INVALID_FIELD at data.placement.runtimeUrl: must match pattern "^https?://"');
    assert.deepEqual(JSON.parse(JSON.stringify(err)), { code: 'INVALID_FIELD', field: 'data.placement.runtimeUrl', reason: 'must match pattern "^https?://"' });
    assert.equal(err.name, 'ContractError');
  });

  it('answers 503 for an infrastructure fault, keeping its cause', () => {
    const cause = new Error('ETIMEDOUT');
    const err = new TransientError('redis timed out', { cause });
    assert.equal(httpStatusOf(err), 503);
    assert.equal(err.cause, cause);
    assert.equal(err.name, 'TransientError');
  });

  it('answers 500 for anything unexpected, which the Broker also redelivers', () => {
    assert.equal(httpStatusOf(new RangeError('bug')), 500);
    assert.equal(httpStatusOf('thrown string'), 500);
    assert.equal(httpStatusOf(undefined), 500);
  });
});
