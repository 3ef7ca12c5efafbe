// Requests whose bodies are bounded before anything buffers them. Node's HTTP server lets a server name the class
// of its requests (http.createServer's `IncomingMessage` option, "useful for extending the original
// IncomingMessage"), and every body byte the parser reads reaches the request through Readable#push: a request of
// this class can therefore pass its body on as usual, hold it (a chunked body, whose size is known only at its end)
// until it is complete and under the limit, or discard it (a request already refused), without ever keeping more
// than the limit in memory. Used by the functions' server (serve.ts) and the local Broker's ingress.
import { IncomingMessage, type ServerResponse } from 'node:http';

/** Discarded bytes after which a refused request's connection is cut rather than read to its end. */
export const MAX_DISCARD_BYTES = 64 * 1024 * 1024;

type Mode = 'pass' | 'hold' | 'discard';

/** An IncomingMessage whose body can be held up to a limit, or discarded, instead of buffered. */
export class BoundedIncomingMessage extends IncomingMessage {
  #mode: Mode = 'pass';
  #limit = Number.POSITIVE_INFINITY;
  #held: Buffer[] = [];
  #heldBytes = 0;
  #discarded = 0;
  #whenHeld: ((outcome: 'complete' | 'over') => void) | undefined;

  /**
   * Keeps the body out of the stream until it is complete: resolves 'complete' once it is (its bytes are then in
   * the stream, which ends), or 'over' as soon as it passes `limit` bytes (it is then discarded).
   */
  holdUpTo(limit: number): Promise<'complete' | 'over'> {
    this.#mode = 'hold';
    this.#limit = limit;
    return new Promise((resolve) => (this.#whenHeld = resolve));
  }

  /** Drops the rest of the body as it arrives; after MAX_DISCARD_BYTES the connection is cut. */
  discard(): void {
    const wasHolding = this.#mode === 'hold';
    this.#mode = 'discard';
    this.#held = [];
    this.#heldBytes = 0;
    if (wasHolding) this.#settle('over');
    // Flowing, so that the end of the body, pushed below, is consumed and the request completes.
    this.resume();
  }

  override push(chunk: unknown, encoding?: BufferEncoding): boolean {
    if (this.#mode === 'pass') return super.push(chunk, encoding);
    // The HTTP parser pushes Buffers (and null at the end); anything else is passed on untouched.
    if (chunk !== null && !Buffer.isBuffer(chunk)) return super.push(chunk, encoding);
    if (chunk === null) {
      if (this.#mode === 'hold') {
        for (const held of this.#held) super.push(held);
        this.#held = [];
        this.#mode = 'pass';
        const pushed = super.push(null);
        this.#settle('complete');
        return pushed;
      }
      return super.push(null);
    }
    const bytes = chunk.length;
    if (this.#mode === 'hold') {
      this.#heldBytes += bytes;
      if (this.#heldBytes <= this.#limit) {
        this.#held.push(chunk);
        return true;
      }
      this.discard();
    }
    this.#discarded += bytes;
    if (this.#discarded > MAX_DISCARD_BYTES) this.socket?.destroy();
    // true: keep the socket reading, so the sender finishes sending and can read our answer.
    return true;
  }

  #settle(outcome: 'complete' | 'over'): void {
    const resolve = this.#whenHeld;
    this.#whenHeld = undefined;
    resolve?.(outcome);
  }
}

/** A request refused before (or while) its body is read: its status, error code and reason. */
export interface BodyRefusal {
  status: 401 | 413 | 415;
  error: 'TOO_LARGE' | 'UNSUPPORTED_ENCODING' | 'UNAUTHENTICATED';
  reason: string;
}

/**
 * Checks a request's declared body before any of it is read: a Content-Length over `limit` is refused (413), so is
 * a Content-Encoding (415: a compressed body's size says nothing of what it inflates to). A chunked body is held
 * up to the limit (holdUpTo) by the caller. Returns the refusal, or undefined when the body may be read.
 */
export function refuseDeclaredBody(req: IncomingMessage, limit: number): BodyRefusal | undefined {
  const encoding = req.headers['content-encoding'];
  if (encoding !== undefined && encoding.trim().toLowerCase() !== 'identity') {
    return { status: 415, error: 'UNSUPPORTED_ENCODING', reason: `a Content-Encoding (${encoding.slice(0, 32)}) is not accepted: send the event uncompressed` };
  }
  const declared = req.headers['content-length'];
  if (declared !== undefined && Number(declared) > limit) {
    return { status: 413, error: 'TOO_LARGE', reason: `the request is ${Number(declared)} bytes; at most ${limit} are accepted` };
  }
  return undefined;
}

/** Whether a request's body arrives in chunks of unknown total (Transfer-Encoding without Content-Length). */
export function isChunked(req: IncomingMessage): boolean {
  return req.headers['content-length'] === undefined && req.headers['transfer-encoding'] !== undefined;
}

/**
 * Answers a refusal and drops the rest of the body as it arrives, keeping the connection open until the sender has
 * sent it (so the sender can read the answer instead of seeing its upload cut, EPIPE), unless it is absurdly large.
 */
export function sendRefusal(req: IncomingMessage, res: ServerResponse, refusal: BodyRefusal, field = 'body'): void {
  if (req instanceof BoundedIncomingMessage) req.discard();
  else req.resume();
  if (res.headersSent) return;
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (refusal.status === 401) headers['www-authenticate'] = 'Bearer';
  res.writeHead(refusal.status, headers).end(JSON.stringify({ error: refusal.error, ...(refusal.status === 401 ? {} : { field }), reason: refusal.reason }));
}
