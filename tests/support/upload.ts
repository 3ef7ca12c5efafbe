// A large POST sent the way a real client sends it: 64 KiB writes that honour backpressure, with a declared length
// or chunked. What the tests of request bounds send, to check that the sender can read the answer it gets.
import { request, type Agent } from 'node:http';
import type { Socket } from 'node:net';

/** What the server answered, and the socket it came on (to tell whether a next request reused it). */
export interface UploadAnswer {
  status: number;
  body: string;
  socket: Socket | null;
}

/**
 * POSTs `total` bytes with `headers` (Content-Length added unless `chunked`). Resolves with the answer once it has
 * been read, and, with `awaitUpload`, only once the whole upload was also sent; rejects if the upload is cut first.
 */
export function uploadBytes(
  url: string,
  total: number,
  opts: { headers: Record<string, string>; chunked?: boolean; agent?: Agent; awaitUpload?: boolean },
): Promise<UploadAnswer> {
  return new Promise((resolve, reject) => {
    const headers = opts.chunked ? { ...opts.headers } : { ...opts.headers, 'content-length': String(total) };
    const req = request(url, { method: 'POST', headers, ...(opts.agent === undefined ? {} : { agent: opts.agent }) });
    let answer: UploadAnswer | undefined;
    let uploaded = opts.awaitUpload !== true;
    const settle = (): void => {
      if (answer && uploaded) resolve(answer);
    };
    req.on('response', (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString('utf8')));
      res.on('end', () => {
        answer = { status: res.statusCode ?? 0, body, socket: req.socket };
        settle();
      });
    });
    req.on('error', reject);
    const chunk = Buffer.alloc(64 * 1024, 0x20);
    let sent = 0;
    const pump = (): void => {
      while (sent < total) {
        const n = Math.min(chunk.length, total - sent);
        sent += n;
        if (!req.write(n === chunk.length ? chunk : chunk.subarray(0, n))) {
          req.once('drain', pump);
          return;
        }
      }
      req.end(() => {
        uploaded = true;
        settle();
      });
    };
    pump();
  });
}
