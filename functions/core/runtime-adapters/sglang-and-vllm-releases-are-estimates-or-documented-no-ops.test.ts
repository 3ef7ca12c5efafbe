// The sglang and vllm adapters against servers reproducing each engine's documented wire behaviour.
// SGLang (sgl-project/sglang): /close_session answers 200 with an EMPTY body, for an unknown id too
// (python/sglang/srt/entrypoints/http_server.py returns Response(status_code=200); scheduler.py only logs "session
// id ... does not exist, cannot delete."); /metrics exists only with --enable-metrics (server_args.py) and its gauges
// count tokens: sglang:num_used_tokens, sglang:max_total_num_tokens, newer sglang:kv_used_tokens
// (python/sglang/srt/metrics/collector.py).
// vLLM (vllm-project/vllm): no per-session release route; POST /reset_prefix_cache exists only with
// VLLM_SERVER_DEV_MODE=1 (vllm/entrypoints/openai/api_server.py; else 404) and answers 200 empty; the usage gauge is
// vllm:kv_cache_usage_perc, older vllm:gpu_cache_usage_perc (vllm/v1/metrics/loggers.py).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { rejection } from '../../gpu-release/runtime-client-test-support.ts';
import { engineClientFor, startFakeEngine, type FakeAnswer, type SeenRequest } from './engine-test-support.ts';

const BPT = 4096;

function sglangServer(opts: { metrics: boolean; newerGauges: boolean }) {
  const sessions = new Map<string, number>([['chat-a', 100], ['chat-b', 50], ['engine-7', 20]]);
  const route = (req: SeenRequest): FakeAnswer => {
    if (req.method === 'POST' && req.path === '/close_session') {
      sessions.delete((req.body as { session_id: string }).session_id);
      return { status: 200, text: '' };
    }
    if (req.method === 'GET' && req.path === '/metrics') {
      if (!opts.metrics) return { status: 404, json: { detail: 'Not Found' } };
      const used = [...sessions.values()].reduce((a, b) => a + b, 0);
      const name = opts.newerGauges ? 'sglang:kv_used_tokens' : 'sglang:num_used_tokens';
      return {
        status: 200,
        text: [
          '# HELP sglang:max_total_num_tokens Maximum total number of tokens in the KV cache pool.',
          '# TYPE sglang:max_total_num_tokens gauge',
          'sglang:max_total_num_tokens{model_name="m",engine_type="unified"} 1000',
          `# HELP ${name} The number of used tokens.`,
          `# TYPE ${name} gauge`,
          `${name}{model_name="m",engine_type="unified"} ${used}`,
        ].join('\n'),
      };
    }
    return { status: 404, json: { detail: 'Not Found' } };
  };
  return { route, sessions };
}

describe('an SGLang release is a close_session whose freed bytes are estimated', () => {
  for (const newerGauges of [false, true]) {
    it(`estimates freed bytes from the used-token gauge (${newerGauges ? 'kv_used_tokens' : 'num_used_tokens'}) and says it is an estimate`, async () => {
      const server = sglangServer({ metrics: true, newerGauges });
      const engine = await startFakeEngine(server.route);
      const client = engineClientFor(engine.url, { kind: 'sglang', bytesPerToken: BPT });
      try {
        const r = await client.release(engine.url, 'chat-a', 3);
        assert.deepEqual({ outcome: r.outcome, freedBytes: r.freedBytes, exact: r.exact }, { outcome: 'released', freedBytes: 100 * BPT, exact: false });
        assert.deepEqual(engine.requests.find((q) => q.path === '/close_session')?.body, { session_id: 'chat-a' });
        assert.deepEqual(await client.memory(engine.url), { totalBytes: 1000 * BPT, usedBytes: 70 * BPT, sessions: 0 });
      } finally {
        client.shutdown();
        await engine.close();
      }
    });
  }

  it('closes the engine session id the placement names, and an unknown id is a 200 too: released, 0 bytes, estimated', async () => {
    const server = sglangServer({ metrics: true, newerGauges: true });
    const engine = await startFakeEngine(server.route);
    const client = engineClientFor(engine.url, { kind: 'sglang', bytesPerToken: BPT });
    try {
      const named = await client.release(engine.url, 'chat-z', 4, undefined, { engineSessionId: 'engine-7' });
      assert.equal(named.freedBytes, 20 * BPT);
      assert.equal(server.sessions.has('engine-7'), false);
      const unknown = await client.release(engine.url, 'never-opened', 5);
      assert.deepEqual({ outcome: unknown.outcome, freedBytes: unknown.freedBytes, exact: unknown.exact }, { outcome: 'released', freedBytes: 0, exact: false });
    } finally {
      client.shutdown();
      await engine.close();
    }
  });

  it('with metrics off the freed figure is unknown (0, estimated) and memory is a typed refusal', async () => {
    const server = sglangServer({ metrics: false, newerGauges: false });
    const engine = await startFakeEngine(server.route);
    const client = engineClientFor(engine.url, { kind: 'sglang', bytesPerToken: BPT });
    try {
      const r = await client.release(engine.url, 'chat-b', 6);
      assert.deepEqual({ freedBytes: r.freedBytes, exact: r.exact }, { freedBytes: 0, exact: false });
      assert.equal(server.sessions.has('chat-b'), false, 'the session was closed all the same');
      assert.equal((await rejection(client.memory(engine.url))).reason, 'unsupported');
      assert.equal((await rejection(client.demote(engine.url, 'chat-a', 6))).reason, 'unsupported');
    } finally {
      client.shutdown();
      await engine.close();
    }
  });
});

function vllmServer(opts: { devMode: boolean; oldGauge: boolean }) {
  let resets = 0;
  const route = (req: SeenRequest): FakeAnswer => {
    if (req.method === 'POST' && req.path === '/reset_prefix_cache') {
      if (!opts.devMode) return { status: 404, json: { detail: 'Not Found' } };
      resets++;
      return { status: 200, text: '' };
    }
    if (req.method === 'GET' && req.path === '/metrics') {
      const name = opts.oldGauge ? 'vllm:gpu_cache_usage_perc' : 'vllm:kv_cache_usage_perc';
      return { status: 200, text: `# HELP ${name} KV-cache usage. 1 means 100 percent usage.\n# TYPE ${name} gauge\n${name}{engine="0",model_name="m"} 0.25\n` };
    }
    return { status: 404, json: { detail: 'Not Found' } };
  };
  return { route, resets: () => resets };
}

describe('a vLLM release', () => {
  it('is a no-op by default: nothing is sent, 0 bytes, estimated, with the reason', async () => {
    const server = vllmServer({ devMode: true, oldGauge: false });
    const engine = await startFakeEngine(server.route);
    const client = engineClientFor(engine.url, { kind: 'vllm' });
    try {
      const r = await client.release(engine.url, 'chat-a', 7);
      assert.deepEqual({ freedBytes: r.freedBytes, exact: r.exact, sent: engine.requests.length }, { freedBytes: 0, exact: false, sent: 0 });
      assert.match(r.note ?? '', /no per-session release/);
      assert.equal(client.capabilities(engine.url).release, false);
    } finally {
      client.shutdown();
      await engine.close();
    }
  });

  it('resets the whole prefix cache only when the operator opted in, and a server without dev mode is a typed refusal', async () => {
    const dev = vllmServer({ devMode: true, oldGauge: false });
    const engine = await startFakeEngine(dev.route);
    const client = engineClientFor(engine.url, { kind: 'vllm', globalReleaseAction: 'reset_prefix_cache' });
    const plain = vllmServer({ devMode: false, oldGauge: false });
    const engine2 = await startFakeEngine(plain.route);
    const client2 = engineClientFor(engine2.url, { kind: 'vllm', globalReleaseAction: 'reset_prefix_cache' });
    try {
      await client.release(engine.url, 'chat-a', 8);
      assert.equal(dev.resets(), 1);
      const err = await rejection(client2.release(engine2.url, 'chat-a', 8));
      assert.deepEqual({ reason: err.reason, retryable: err.retryable }, { reason: 'unsupported', retryable: false });
      assert.equal(engine2.requests.length, 1, 'not retried');
    } finally {
      client.shutdown();
      client2.shutdown();
      await Promise.all([engine.close(), engine2.close()]);
    }
  });

  for (const oldGauge of [false, true]) {
    it(`reports memory as a share from ${oldGauge ? 'the older gpu_cache_usage_perc' : 'kv_cache_usage_perc'}, and cannot list`, async () => {
      const server = vllmServer({ devMode: false, oldGauge });
      const engine = await startFakeEngine(server.route);
      const client = engineClientFor(engine.url, { kind: 'vllm' });
      try {
        assert.deepEqual(await client.memory(engine.url), { totalBytes: 1_000_000, usedBytes: 250_000, sessions: 0, unit: 'share' });
        assert.deepEqual(await client.listSessions(engine.url), { unsupported: true, status: 501 });
      } finally {
        client.shutdown();
        await engine.close();
      }
    });
  }
});
