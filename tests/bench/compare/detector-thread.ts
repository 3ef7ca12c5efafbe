// A mechanism's detector in a worker thread of the bench's process: its timers and Redis replies never wait for the
// heartbeat driver's event loop, and its CPU still counts in process.cpuUsage(). The main thread talks to it through
// DetectorThread; messages in: 'pause' (stop the detector, as an outage), 'resume' (start a fresh one), 'stop';
// out: 'ready', 'paused', 'resumed', 'stopped', and batches of detections.
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { mechanismNamed, type Detector, type Liveness, type RedisTarget } from './mechanisms.ts';

interface Setup {
  mechanism: string;
  target: RedisTarget;
  liveness: Liveness;
}

type FromThread = { kind: 'ready' | 'paused' | 'resumed' | 'stopped' } | { kind: 'detections'; ids: string[]; ats: number[] } | { kind: 'error'; message: string };

/** A detector running in its own thread; detections are collected here as they arrive. */
export class DetectorThread {
  readonly ids: string[] = [];
  readonly ats: number[] = [];
  readonly #worker: Worker;
  readonly #waiting = new Map<string, () => void>();
  #failure: Error | undefined;

  private constructor(setup: Setup) {
    this.#worker = new Worker(new URL(import.meta.url), { workerData: setup });
    this.#worker.on('message', (msg: FromThread) => {
      if (msg.kind === 'detections') {
        for (let i = 0; i < msg.ids.length; i++) {
          this.ids.push(msg.ids[i]!);
          this.ats.push(msg.ats[i]!);
        }
      } else if (msg.kind === 'error') {
        this.#failure ??= new Error(`detector thread: ${msg.message}`);
      } else {
        this.#waiting.get(msg.kind)?.();
        this.#waiting.delete(msg.kind);
      }
    });
    this.#worker.on('error', (err: Error) => {
      this.#failure ??= err;
    });
  }

  /** Starts the thread and its detector; resolves once the detector runs. */
  static async start(setup: Setup): Promise<DetectorThread> {
    const t = new DetectorThread(setup);
    await t.#await('ready');
    return t;
  }

  /** The first error the thread reported, if any. */
  get failure(): Error | undefined {
    return this.#failure;
  }

  #await(kind: string): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.#waiting.set(kind, resolve);
      this.#worker.once('exit', () => reject(this.#failure ?? new Error(`detector thread exited before '${kind}'`)));
    });
  }

  /** Stops the detector (the outage begins once this resolves). */
  async pause(): Promise<void> {
    const done = this.#await('paused');
    this.#worker.postMessage('pause');
    await done;
  }

  /** Starts a fresh detector (the outage ends once this resolves). */
  async resume(): Promise<void> {
    const done = this.#await('resumed');
    this.#worker.postMessage('resume');
    await done;
  }

  /** Ends the thread at once, detector or not (after stop(), or when a run fails). */
  async terminate(): Promise<void> {
    await this.#worker.terminate();
  }

  /** Stops the detector and the thread, after its last detections have arrived. */
  async stop(): Promise<void> {
    const done = this.#await('stopped');
    this.#worker.postMessage('stop');
    await done;
    await this.#worker.terminate();
  }
}

async function runThread(setup: Setup): Promise<void> {
  const port = parentPort!;
  const mechanism = mechanismNamed(setup.mechanism);
  let ids: string[] = [];
  let ats: number[] = [];
  const flush = () => {
    if (ids.length === 0) return;
    port.postMessage({ kind: 'detections', ids, ats } satisfies FromThread);
    ids = [];
    ats = [];
  };
  const flusher = setInterval(flush, 20);
  const onExpired = (id: string, at: number) => {
    ids.push(id);
    ats.push(at);
  };
  const report = (err: unknown) => port.postMessage({ kind: 'error', message: String(err) } satisfies FromThread);
  let detector: Detector | undefined = await mechanism.detector(setup.target, setup.liveness, onExpired);
  port.on('message', (msg: string) => {
    void (async () => {
      try {
        if (msg === 'pause') {
          await detector?.stop();
          detector = undefined;
          port.postMessage({ kind: 'paused' } satisfies FromThread);
        } else if (msg === 'resume') {
          detector = await mechanism.detector(setup.target, setup.liveness, onExpired);
          port.postMessage({ kind: 'resumed' } satisfies FromThread);
        } else if (msg === 'stop') {
          await detector?.stop();
          detector = undefined;
          clearInterval(flusher);
          flush();
          port.postMessage({ kind: 'stopped' } satisfies FromThread);
        }
      } catch (err) {
        report(err);
      }
    })();
  });
  port.postMessage({ kind: 'ready' } satisfies FromThread);
}

if (!isMainThread && (workerData as Setup | undefined)?.mechanism) await runThread(workerData as Setup);
