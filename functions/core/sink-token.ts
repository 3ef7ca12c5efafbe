// The bearer token an emitter presents to the Broker, so the Broker's EventPolicies know who is sending (Knative
// Eventing's sender identity, OIDC): a ServiceAccount token whose audience is the Broker, projected into the pod as
// a file that the kubelet rotates before it expires. It is read again every so often, and at once after a 401.
import { readFileSync } from 'node:fs';

/** How long a token read from its file is used before the file is read again. */
export const TOKEN_REREAD_MS = 30_000;

/** A token file, read lazily and again every TOKEN_REREAD_MS (or after invalidate()). */
export class SinkToken {
  readonly file: string;
  readonly #now: () => number;
  #token: string | undefined;
  #readAt = Number.NEGATIVE_INFINITY;

  constructor(file: string, now: () => number = Date.now) {
    this.file = file;
    this.#now = now;
  }

  /** The current token; throws when the file cannot be read or is empty (the emission then fails and is retried). */
  current(): string {
    const now = this.#now();
    if (this.#token === undefined || now - this.#readAt >= TOKEN_REREAD_MS) {
      const text = readFileSync(this.file, 'utf8').trim();
      if (text === '' || /\s/.test(text)) throw new Error(`the sink token file ${this.file} holds no token`);
      this.#token = text;
      this.#readAt = now;
    }
    return this.#token;
  }

  /** Forgets the cached token: the Broker refused it (401), so the next emission reads the file again. */
  invalidate(): void {
    this.#token = undefined;
  }
}
