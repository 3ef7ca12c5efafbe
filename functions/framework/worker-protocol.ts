// What crosses between a function's main thread (worker-host.ts) and its host's worker thread (host-worker.ts): the
// messages and what they carry. Kept apart from both so the worker loads neither the framework nor the server.
import type { Config } from '../core/config.ts';
import type { Logger } from '../core/log.ts';
import type { ServableHost } from './serve.ts';

/** What a function's host module exports for its worker: the host, built once from the environment. */
export interface WorkerHostModule {
  startHost(env: NodeJS.ProcessEnv): {
    host: ServableHost & { core: { close(): Promise<void>; deps: { config: Pick<Config, 'LOG_LEVEL'>; logger: Logger } } };
    /** Run as soon as a stop begins, while the requests in flight finish (cancels what would make them wait). */
    stopping?: () => void;
    /** Run once the requests in flight have finished, before the core closes (a function's own timers and clients). */
    beforeClose?: () => void | Promise<void>;
  };
}

/**
 * A request as the worker sees it: what the host reads of one. The body crosses as its bytes (an ArrayBuffer of its
 * exact size, transferred) and the worker decodes it again: a decoded tree would be structured-cloned, which fails
 * past a few thousand levels of nesting that JSON.parse takes (and the host answers 400), and costs more than a parse.
 */
export interface ForwardedRequest {
  method: string;
  path: string;
  headers: Record<string, string | string[] | undefined>;
  query: Record<string, unknown> | undefined;
  body: ArrayBuffer | undefined;
}

/** What the host wrote: a body through Express's `json` (already serialised), or a raw `end`. */
export interface Answer {
  kind: 'response';
  id: number;
  status: number;
  headers: Record<string, string>;
  written: { kind: 'json'; body: string } | { kind: 'end'; body: string | ArrayBuffer | undefined };
}

export type FromMain = { kind: 'request'; id: number; request: ForwardedRequest } | { kind: 'stopping' } | { kind: 'stop' };
export type FromWorker =
  | { kind: 'ready'; name: string; batches: boolean; limits: { listenHost: string; maxEventBytes: number; maxBatchBytes: number; logLevel: string } }
  | Answer
  | { kind: 'stopped'; error?: string };

/** The bytes of a body as an ArrayBuffer of their own, to transfer (a Buffer is often a view into a shared pool). */
export function ownBytes(bytes: Uint8Array): ArrayBuffer {
  return bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer;
}
