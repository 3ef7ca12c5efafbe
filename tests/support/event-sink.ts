// A real HTTP event sink standing in for the Knative Broker in tests: it parses what it receives with the
// CloudEvents SDK, answers 202 like the Broker, and can be told to fail or to never answer the next requests.
import { createServer, type IncomingHttpHeaders, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { HTTP, type CloudEventV1 } from 'cloudevents';

/** One request the sink received, whatever it answered. */
export interface SinkRequest {
  headers: IncomingHttpHeaders;
  body: string;
  /** The status it was answered with; undefined while it hangs. */
  status: number | undefined;
}

/** One CloudEvent the sink accepted (answered 2xx), as parsed by the CloudEvents SDK. */
export interface ReceivedEvent {
  event: CloudEventV1<unknown>;
  headers: IncomingHttpHeaders;
  body: string;
}

/** How long a wait may take before it fails the test. */
export interface WaitOptions {
  timeoutMs?: number;
}

/** A running sink. */
export interface EventSink {
  /** Where to send events (http://127.0.0.1:<port>/). */
  readonly url: string;
  /** Every request received, in order, including failed and hanging ones. */
  readonly requests: readonly SinkRequest[];
  /** Every event accepted, in order. */
  readonly events: readonly ReceivedEvent[];
  /** Answers the next `count` requests with `status` (and does not accept their events). */
  failNext(count: number, status: number): void;
  /** Leaves the next `count` requests unanswered until the sink closes (a Broker that never answers). */
  hangNext(count: number): void;
  /** Resolves with the first `count` accepted events once there are that many; rejects clearly on timeout. */
  waitForEvents(count: number, opts?: WaitOptions): Promise<ReceivedEvent[]>;
  /** Resolves with the first accepted event matching `predicate`; rejects clearly on timeout. */
  waitForEvent(predicate: (ev: ReceivedEvent) => boolean, opts?: WaitOptions): Promise<ReceivedEvent>;
  /** Stops listening and drops every connection, hanging ones included. */
  close(): Promise<void>;
}

const DEFAULT_WAIT_MS = 5000;

interface Waiter {
  check(): boolean;
  cancel(reason: Error): void;
}

type Planned = { kind: 'fail'; status: number } | { kind: 'hang' };

function describe(events: readonly ReceivedEvent[]): string {
  return JSON.stringify(events.map((e) => ({ id: e.event.id, type: e.event.type, subject: e.event.subject })));
}

/** Starts a sink on 127.0.0.1 on a free port. */
export async function startEventSink(): Promise<EventSink> {
  const requests: SinkRequest[] = [];
  const events: ReceivedEvent[] = [];
  const plan: Planned[] = [];
  const waiters = new Set<Waiter>();
  const hanging = new Set<ServerResponse>();

  const notify = (): void => {
    for (const w of waiters) if (w.check()) waiters.delete(w);
  };

  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      const record: SinkRequest = { headers: req.headers, body, status: undefined };
      requests.push(record);
      const next = plan.shift();
      if (next?.kind === 'hang') {
        hanging.add(res);
        res.on('close', () => hanging.delete(res));
        notify();
        return;
      }
      if (next?.kind === 'fail') {
        record.status = next.status;
        res.writeHead(next.status, { 'content-type': 'text/plain' }).end(`planned failure ${next.status}`);
        notify();
        return;
      }
      let parsed: CloudEventV1<unknown>[];
      try {
        const out = HTTP.toEvent<unknown>({ headers: req.headers, body });
        parsed = Array.isArray(out) ? out : [out];
      } catch (err) {
        record.status = 400;
        res.writeHead(400, { 'content-type': 'text/plain' }).end(`not a CloudEvent: ${String(err)}`);
        notify();
        return;
      }
      record.status = 202;
      for (const event of parsed) events.push({ event, headers: req.headers, body });
      res.writeHead(202).end();
      notify();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as AddressInfo;

  function waitFor<T>(settled: () => T | undefined, what: () => string, opts?: WaitOptions): Promise<T> {
    const timeoutMs = opts?.timeoutMs ?? DEFAULT_WAIT_MS;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        waiters.delete(waiter);
        reject(new Error(`event sink: ${what()} within ${timeoutMs} ms; received ${describe(events)}`));
      }, timeoutMs);
      const waiter: Waiter = {
        check: () => {
          const value = settled();
          if (value === undefined) return false;
          clearTimeout(timer);
          resolve(value);
          return true;
        },
        cancel: (reason) => {
          clearTimeout(timer);
          reject(reason);
        },
      };
      if (!waiter.check()) waiters.add(waiter);
    });
  }

  return {
    url: `http://127.0.0.1:${port}/`,
    requests,
    events,
    failNext(count, status) {
      for (let i = 0; i < count; i++) plan.push({ kind: 'fail', status });
    },
    hangNext(count) {
      for (let i = 0; i < count; i++) plan.push({ kind: 'hang' });
    },
    waitForEvents(count, opts) {
      return waitFor(
        () => (events.length >= count ? events.slice(0, count) : undefined),
        () => `expected ${count} events, got ${events.length}`,
        opts,
      );
    },
    waitForEvent(predicate, opts) {
      return waitFor(
        () => events.find(predicate),
        () => 'no event matched the predicate',
        opts,
      );
    },
    async close() {
      for (const w of waiters) w.cancel(new Error(`event sink closed while a test was still waiting; received ${describe(events)}`));
      waiters.clear();
      for (const res of hanging) res.destroy();
      server.closeAllConnections();
      await new Promise<void>((resolve, reject) => server.close((err) => (err ? reject(err) : resolve())));
    },
  };
}
