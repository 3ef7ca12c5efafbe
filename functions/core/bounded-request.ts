// Requests whose bodies are bounded before anything buffers them. Node's HTTP server lets a server name the class
// of its requests (http.createServer's `IncomingMessage` option, "useful for extending the original
// IncomingMessage"), and every body byte the parser reads reaches the request through Readable#push: a request of
// this class can therefore collect its body up to a limit before anyone reads it (and be checked whole: a chunked
// body's size is known only at its end, a body's JSON only once it is all there), then end it as read (its collector
// keeps the body) or discard it (a request refused), without ever keeping more than the limit in memory. Used by the functions'
// server (functions/framework/serve.ts) and the local Broker's ingress.
import { IncomingMessage, type ServerResponse } from 'node:http';

/** Discarded bytes after which a refused request's connection is cut rather than read to its end. */
export const MAX_DISCARD_BYTES = 64 * 1024 * 1024;

type Mode = 'pass' | 'hold' | 'discard';
/** How a discarded body ended: read to its end, or still coming past MAX_DISCARD_BYTES. */
export type DiscardEnd = 'ended' | 'over-bound';

/** An IncomingMessage whose body can be collected up to a limit, then released or discarded. */
export class BoundedIncomingMessage extends IncomingMessage {
  #mode: Mode = 'pass';
  #limit = Number.POSITIVE_INFINITY;
  #held: Buffer[] = [];
  #heldBytes = 0;
  #ended = false;
  #discarded = 0;
  #whenHeld: ((body: Buffer | undefined) => void) | undefined;
  #whenDiscardEnds: Array<(how: DiscardEnd) => void> = [];
  // Set once a discardToEnd() caller was told 'over-bound': its answer closes the connection, push() must not cut it first.
  #answerOwnsClose = false;

  /**
   * Keeps the body from the stream's readers until it is complete: resolves with it then (release() hands it on), or
   * with undefined as soon as it passes `limit` bytes (the rest is then discarded). Call before any body byte
   * arrives: synchronously in the server's request listener.
   */
  collect(limit: number): Promise<Buffer | undefined> {
    this.#mode = 'hold';
    this.#limit = limit;
    return new Promise((resolve) => (this.#whenHeld = resolve));
  }

  /**
   * After collect() resolved with the body, which the caller keeps: ends the stream without handing it on, so that
   * readers find the request read (body-parser skips a request whose stream has ended: on-finished's isFinished).
   * Resolves once the stream has ended.
   */
  markRead(): Promise<void> {
    if (this.#mode !== 'hold' || !this.#ended) throw new Error('markRead() follows a collect() that resolved with the body');
    this.#mode = 'pass';
    this.#held = [];
    const ended = new Promise<void>((resolve) => this.once('end', () => resolve()));
    super.push(null);
    this.resume();
    return ended;
  }

  /**
   * Drops the rest of the body as it arrives; after MAX_DISCARD_BYTES the connection is cut, unless someone waits in
   * discardToEnd() (who then answers and closes it).
   */
  discard(): void {
    const wasHolding = this.#mode === 'hold' && !this.#ended;
    const endedWhileHeld = this.#mode === 'hold' && this.#ended;
    this.#mode = 'discard';
    this.#held = [];
    this.#heldBytes = 0;
    if (wasHolding) this.#settle(undefined);
    // A body held to its end never reached the stream: end it, so the request completes.
    if (endedWhileHeld) {
      super.push(null);
      this.#discardEnded('ended');
    }
    // Flowing, so that the end of the body is consumed and the request completes.
    this.resume();
  }

  /**
   * Discards the rest of the body and resolves once it has all arrived ('ended'), or once more than MAX_DISCARD_BYTES
   * were dropped ('over-bound': the connection is then the caller's to close, after its answer).
   */
  discardToEnd(): Promise<DiscardEnd> {
    if (this.readableEnded || (this.#mode !== 'hold' && this.complete)) {
      this.discard();
      return Promise.resolve('ended');
    }
    const ended = new Promise<DiscardEnd>((resolve) => this.#whenDiscardEnds.push(resolve));
    this.discard();
    return ended;
  }

  override push(chunk: unknown, encoding?: BufferEncoding): boolean {
    if (this.#mode === 'pass') return super.push(chunk, encoding);
    // The HTTP parser pushes Buffers (and null at the end); anything else is passed on untouched.
    if (chunk !== null && !Buffer.isBuffer(chunk)) return super.push(chunk, encoding);
    if (chunk === null) {
      if (this.#mode === 'hold') {
        this.#ended = true;
        this.#settle(this.#held.length === 1 ? this.#held[0]! : Buffer.concat(this.#held));
        return true;
      }
      const pushed = super.push(null);
      if (this.#mode === 'discard') this.#discardEnded('ended');
      return pushed;
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
    if (this.#discarded > MAX_DISCARD_BYTES) {
      if (this.#whenDiscardEnds.length > 0) this.#discardEnded('over-bound');
      else if (!this.#answerOwnsClose) this.socket?.destroy();
    }
    // true: keep the socket reading, so the sender finishes sending and can read our answer.
    return true;
  }

  #discardEnded(how: DiscardEnd): void {
    if (how === 'over-bound') this.#answerOwnsClose = true;
    const waiting = this.#whenDiscardEnds;
    this.#whenDiscardEnds = [];
    for (const resolve of waiting) resolve(how);
  }

  #settle(body: Buffer | undefined): void {
    const resolve = this.#whenHeld;
    this.#whenHeld = undefined;
    resolve?.(body);
  }
}

/** A request refused before (or while) its body is read: its status, error code and reason. */
export interface BodyRefusal {
  status: 400 | 401 | 413 | 415;
  error: 'TOO_LARGE' | 'UNSUPPORTED_ENCODING' | 'UNAUTHENTICATED' | 'BAD_JSON';
  reason: string;
}

/** The refusal of a body that passed its limit while it was collected. */
export function tooLarge(limit: number): BodyRefusal {
  return { status: 413, error: 'TOO_LARGE', reason: `the request is over ${limit} bytes; at most ${limit} are accepted` };
}

/**
 * Checks a request's declared body before any of it is read: a Content-Length over `limit` is refused (413), so is
 * a Content-Encoding (415: a compressed body's size says nothing of what it inflates to). A chunked body is
 * collected up to the limit by the caller. Returns the refusal, or undefined when the body may be read.
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

function writeRefusal(res: ServerResponse, refusal: BodyRefusal, field: string, code: string, extraHeaders: Record<string, string> = {}): void {
  if (res.headersSent) return;
  const headers: Record<string, string> = { 'content-type': 'application/json', ...extraHeaders };
  if (refusal.status === 401) headers['www-authenticate'] = 'Bearer';
  res.writeHead(refusal.status, headers).end(JSON.stringify({ error: code, ...(refusal.status === 401 ? {} : { field }), reason: refusal.reason }));
}

/**
 * Answers a refusal and drops the rest of the body as it arrives, keeping the connection open until the sender has
 * sent it (so the sender can read the answer instead of seeing its upload cut, EPIPE), unless it is absurdly large.
 */
export function sendRefusal(req: BoundedIncomingMessage, res: ServerResponse, refusal: BodyRefusal, field = 'body', code: string = refusal.error): void {
  req.discard();
  writeRefusal(res, refusal, field, code);
}

/**
 * Like sendRefusal, but answers only once the rest of the body has arrived (dropped, never kept). An answer that
 * comes while a client is still uploading is not one every client can read: Node's http client without keep-alive
 * tears its socket down when the answer ends and its pending writes fail with EPIPE, and with keep-alive it stops
 * emitting 'drain', so a sender that finishes its upload before reading the answer waits forever. After the whole
 * body any client reads it. A body still coming past MAX_DISCARD_BYTES is answered then, with Connection: close.
 */
export async function sendRefusalAfterBody(req: BoundedIncomingMessage, res: ServerResponse, refusal: BodyRefusal, field = 'body', code: string = refusal.error): Promise<void> {
  const how = await req.discardToEnd();
  if (how === 'over-bound') {
    // Node closes the connection once the answer is written (Connection: close); whatever the sender still sends then
    // may reset it, a cost for a sender over the bound only.
    writeRefusal(res, refusal, field, code, { connection: 'close' });
    return;
  }
  writeRefusal(res, refusal, field, code);
}
