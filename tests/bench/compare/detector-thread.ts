// A mechanism's detector in a worker thread of the bench's process: its timers and Redis replies never wait for the
// heartbeat driver's event loop, and its CPU still counts in process.cpuUsage(). The main thread talks to it through
// DetectorThread; messages in: 'pause' (stop the detector, as an outage), 'resume' (start a fresh one), 'stop';
// out: 'ready', 'paused', 'resumed', 'stopped', and batches of detections. With --profile, 'profile-start' and
// 'profile-stop' take a CPU profile of the thread, its event-loop delay and its GC pauses in between ('profile' out).
import { monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { mechanismNamed, type Detector, type Liveness, type RedisTarget } from './mechanisms.ts';
import { ThreadProfiler, topFrames, type TopFrame } from './profile.ts';

interface Setup {
  mechanism: string;
  target: RedisTarget;
  liveness: Liveness;
}

/** Where the detector thread's time went while it was profiled. */
export interface ThreadProfile {
  frames: TopFrame[];
  busyMs: number;
  idleMs: number;
  /** Event-loop delay (how much later than asked a 5 ms timer ran), ms. */
  loopDelayMs: { p50: number; p99: number; max: number };
  /** Garbage collections: how many, their total and longest pause, ms. */
  gc: { count: number; totalMs: number; maxMs: number };
}

type FromThread =
  | { kind: 'ready' | 'paused' | 'resumed' | 'stopped' | 'profiling' }
  | { kind: 'detections'; ids: string[]; ats: number[] }
  | { kind: 'profile'; profile: ThreadProfile }
  | { kind: 'error'; message: string };

/** A detector running in its own thread; detections are collected here as they arrive. */
export class DetectorThread {
  readonly ids: string[] = [];
  readonly ats: number[] = [];
  readonly #worker: Worker;
  readonly #waiting = new Map<string, () => void>();
  #failure: Error | undefined;
  #profile: ThreadProfile | undefined;

  private constructor(setup: Setup) {
    this.#worker = new Worker(new URL(import.meta.url), { workerData: setup });
    this.#worker.on('message', (msg: FromThread) => {
      if (msg.kind === 'detections') {
        for (let i = 0; i < msg.ids.length; i++) {
          this.ids.push(msg.ids[i]!);
          this.ats.push(msg.ats[i]!);
        }
      } else if (msg.kind === 'profile') {
        this.#profile = msg.profile;
        this.#waiting.get('profile')?.();
        this.#waiting.delete('profile');
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

  /** Starts profiling the detector's thread (bench:compare --profile). */
  async profileStart(): Promise<void> {
    const done = this.#await('profiling');
    this.#worker.postMessage('profile-start');
    await done;
  }

  /** Stops profiling and answers where the thread's time went since profileStart(). */
  async profileStop(): Promise<ThreadProfile | undefined> {
    const done = this.#await('profile');
    this.#worker.postMessage('profile-stop');
    await done;
    return this.#profile;
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

/** How often the event-loop delay is sampled while profiling, ms. */
const LOOP_SAMPLE_MS = 5;

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
  let profiling: { profiler: ThreadProfiler; loop: ReturnType<typeof monitorEventLoopDelay>; gc: PerformanceObserver; pauses: number[] } | undefined;
  port.on('message', (msg: string) => {
    void (async () => {
      try {
        if (msg === 'profile-start') {
          const pauses: number[] = [];
          const gc = new PerformanceObserver((list) => {
            for (const e of list.getEntries()) pauses.push(e.duration);
          });
          gc.observe({ entryTypes: ['gc'] });
          const loop = monitorEventLoopDelay({ resolution: LOOP_SAMPLE_MS });
          loop.enable();
          const profiler = new ThreadProfiler();
          await profiler.start();
          profiling = { profiler, loop, gc, pauses };
          port.postMessage({ kind: 'profiling' } satisfies FromThread);
        } else if (msg === 'profile-stop' && profiling) {
          const { profiler, loop, gc, pauses } = profiling;
          profiling = undefined;
          const top = topFrames(await profiler.stop());
          loop.disable();
          gc.disconnect();
          // The histogram holds the time between samples: what exceeds the sampling period is the loop's delay.
          const ms = (ns: number) => Math.max(0, ns / 1e6 - LOOP_SAMPLE_MS);
          port.postMessage({
            kind: 'profile',
            profile: {
              ...top,
              loopDelayMs: { p50: ms(loop.percentile(50)), p99: ms(loop.percentile(99)), max: ms(loop.max) },
              gc: { count: pauses.length, totalMs: pauses.reduce((a, b) => a + b, 0), maxMs: pauses.reduce((a, b) => Math.max(a, b), 0) },
            },
          } satisfies FromThread);
        } else if (msg === 'pause') {
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
