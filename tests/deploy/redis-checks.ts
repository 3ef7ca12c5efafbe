// What the rendered manifests make the in-cluster Redis do, and where secrets may appear on a command line:
// - checkRedisMemory: Redis' effective configuration (its ConfigMap's redis.conf, then the arguments after it, as
//   redis-server reads them) sets maxmemory with noeviction, and the container's memory limit leaves room for the
//   AOF-rewrite fork and Redis' own overhead;
// - checkNoSecretsOnCommandLines: no container of any workload puts a Secret's value on a process's command line,
//   through the kubelet's $(VAR) expansion, a shell's $VAR, or the value written out;
// - runRenderedRedis: runs the rendered StatefulSet's init container script and redis-server command on this machine,
//   so a test can prove the start-up works and keeps the password off every command line.
// Each check returns the problems it found, one sentence each; an empty list means the rendering is sound.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { at, ofKind, obj, arr, str, type Obj } from './deployment-checks.ts';
import { describe, show, type Json, type Manifest } from './manifest-schemas.ts';
import { diesWithParent } from '../../tools/local-stack/parent-death.ts';


/**
 * Copy-on-write during the AOF rewrite's fork: "If you are using Redis in a write-heavy application, while saving an
 * RDB file on disk or rewriting the AOF log, Redis can use up to 2 times the memory normally used" (redis/redis-doc
 * docs/management/admin.md, "Memory"). Heartbeats rewrite every live session's hash every few seconds, so a
 * rewrite touches most pages: the worst case is the expected one.
 */
export const FORK_COPY_ON_WRITE_FACTOR = 2;

/**
 * Redis' memory beyond the data maxmemory counts (allocator fragmentation, client and AOF buffers): "maxmemory should
 * be set by calculating the overhead for Redis, other than data, and the fragmentation overhead. So if you think you
 * have 10 GB of free memory, set it to 8 or 9" (same page): 10/8 = 1.25.
 */
export const OVERHEAD_FACTOR = 1.25;

/** Parses a Redis memory amount (`800mb`, `4gb`, `1000000`): k/m/g are powers of 1000, kb/mb/gb of 1024 (redis.conf, "Units"). */
export function parseRedisBytes(text: string): number {
  const m = /^(\d+)(k|kb|m|mb|g|gb)?$/i.exec(text.trim());
  if (!m) throw new Error(`"${text}" is not a Redis memory amount`);
  const unit = (m[2] ?? '').toLowerCase();
  const scale: Record<string, number> = { '': 1, k: 1e3, kb: 1024, m: 1e6, mb: 1024 ** 2, g: 1e9, gb: 1024 ** 3 };
  return Number(m[1]) * (scale[unit] ?? NaN);
}

/** Parses a Kubernetes memory quantity (`10Gi`, `512Mi`, `1G`, `2000000`) into bytes (apimachinery resource.Quantity). */
export function parseQuantityBytes(text: string): number {
  const m = /^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$/.exec(text.trim());
  if (!m) throw new Error(`"${text}" is not a memory quantity`);
  const scale: Record<string, number> = { '': 1, Ki: 1024, Mi: 1024 ** 2, Gi: 1024 ** 3, Ti: 1024 ** 4, k: 1e3, M: 1e6, G: 1e9, T: 1e12 };
  return Number(m[1]) * (scale[m[2] ?? ''] ?? NaN);
}

/** The StatefulSets that run redis-server (the in-cluster Redis; none where Memorystore replaces it). */
export function redisStatefulSets(ms: readonly Manifest[]): Manifest[] {
  return ofKind(ms, 'StatefulSet', 'apps').filter((s) => redisContainer(s) !== undefined);
}

function podSpec(m: Manifest): Obj {
  return obj(at(m.doc, 'spec.template.spec'));
}

function redisContainer(s: Manifest): Obj | undefined {
  return arr(podSpec(s).containers).map(obj).find((c) => arr(c.command).concat(arr(c.args)).some((a) => typeof a === 'string' && /(^|\/|\s)redis-server(\s|$)/.test(a)));
}

/** The redis.conf text a StatefulSet mounts at `file`, from the rendered ConfigMap behind that volume. */
function mountedFile(ms: readonly Manifest[], s: Manifest, container: Obj, file: string): string | undefined {
  for (const mount of arr(container.volumeMounts).map(obj)) {
    const mountPath = str(mount.mountPath) ?? '';
    if (!file.startsWith(`${mountPath}/`)) continue;
    const volume = arr(podSpec(s).volumes).map(obj).find((v) => v.name === mount.name);
    const configMap = str(at(volume, 'configMap.name'));
    const cm = ofKind(ms, 'ConfigMap', '').find((c) => str(at(c.doc, 'metadata.name')) === configMap);
    return str(obj(at(cm?.doc, 'data'))[file.slice(mountPath.length + 1)]);
  }
  return undefined;
}

/**
 * The settings redis-server runs with: the config file's directives, then the `--name value` arguments after it,
 * which redis-server appends to the file's text, so a later one wins (redis/redis src/server.c main). Undefined
 * when the container does not run redis-server directly with a config file (a shell in between hides its arguments).
 */
export function redisServerSettings(ms: readonly Manifest[], s: Manifest): Map<string, string> | undefined {
  const c = redisContainer(s);
  if (!c) return undefined;
  const argv = [...arr(c.command), ...arr(c.args)].map((a) => (typeof a === 'string' ? a : show(a)));
  if (argv[0] !== 'redis-server' || !argv[1]?.endsWith('.conf')) return undefined;
  const settings = new Map<string, string>();
  const conf = mountedFile(ms, s, c, argv[1]);
  if (conf === undefined) return undefined;
  for (const line of conf.split('\n')) {
    const words = line.trim().split(/\s+/);
    if (words[0] && !words[0].startsWith('#')) settings.set(words[0].toLowerCase(), words.slice(1).join(' '));
  }
  let name: string | undefined;
  for (const a of argv.slice(2)) {
    if (a.startsWith('--')) {
      name = a.slice(2).toLowerCase();
      settings.set(name, '');
    } else if (name !== undefined) settings.set(name, `${settings.get(name) ?? ''} ${a}`.trim());
  }
  return settings;
}

/** In every Redis StatefulSet: maxmemory set, noeviction, and the memory limit holding twice the data at 1.25x overhead. */
export function checkRedisMemory(ms: readonly Manifest[]): string[] {
  const problems: string[] = [];
  for (const s of redisStatefulSets(ms)) {
    const settings = redisServerSettings(ms, s);
    if (!settings) {
      problems.push(`${describe(s)} does not run redis-server with its config file as the first argument, so its memory settings cannot be read`);
      continue;
    }
    const policy = settings.get('maxmemory-policy');
    if (policy !== 'noeviction') problems.push(`${describe(s)} runs Redis with maxmemory-policy ${show(policy)}, not noeviction: a full Redis would evict session state`);
    const maxmemory = settings.get('maxmemory');
    const bytes = maxmemory === undefined ? 0 : parseRedisBytes(maxmemory);
    if (bytes === 0) {
      problems.push(`${describe(s)} runs Redis without maxmemory: noeviction never applies and Redis grows until it is OOM-killed at its container's limit`);
      continue;
    }
    const limit = str(at(redisContainer(s), 'resources.limits.memory'));
    if (limit === undefined) {
      problems.push(`${describe(s)}'s Redis container has no memory limit to keep maxmemory ${maxmemory} below`);
      continue;
    }
    const needed = bytes * FORK_COPY_ON_WRITE_FACTOR * OVERHEAD_FACTOR;
    if (needed > parseQuantityBytes(limit)) {
      problems.push(`${describe(s)} sets maxmemory ${maxmemory}: ${FORK_COPY_ON_WRITE_FACTOR}x (the AOF-rewrite fork's copy-on-write) at ${OVERHEAD_FACTOR}x (overhead and fragmentation) is ${Math.ceil(needed / 1024 ** 2)} MiB, more than the container's ${limit} limit`);
    }
  }
  return problems;
}

/** Every pod spec in the rendering (workload templates, CronJobs' job templates, bare Pods), with its owner. */
function podSpecs(ms: readonly Manifest[]): { owner: Manifest; spec: Obj }[] {
  return ms.flatMap((m) => {
    const spec = m.doc.kind === 'Pod' ? obj(at(m.doc, 'spec')) : obj(at(m.doc, 'spec.template.spec') ?? at(m.doc, 'spec.jobTemplate.spec.template.spec'));
    return Object.keys(spec).length > 0 ? [{ owner: m, spec }] : [];
  });
}

/** The values of the Secrets the rendering itself carries (a dev overlay's generated password), decoded. */
function renderedSecretValues(ms: readonly Manifest[]): Map<string, Map<string, string>> {
  const out = new Map<string, Map<string, string>>();
  for (const s of ofKind(ms, 'Secret', '')) {
    const values = new Map<string, string>();
    for (const [k, v] of Object.entries(obj(at(s.doc, 'data')))) if (typeof v === 'string') values.set(k, Buffer.from(v, 'base64').toString('utf8'));
    for (const [k, v] of Object.entries(obj(at(s.doc, 'stringData')))) if (typeof v === 'string') values.set(k, v);
    out.set(str(at(s.doc, 'metadata.name')) ?? '', values);
  }
  return out;
}

/** Every argv a container's processes are started with: command and args, exec probes, lifecycle hooks. */
function commandLines(c: Obj): { where: string; words: string[] }[] {
  const words = (v: Json | undefined) => arr(v).map((w) => (typeof w === 'string' ? w : show(w)));
  const lines = [{ where: 'command and args', words: [...words(c.command), ...words(c.args)] }];
  for (const probe of ['livenessProbe', 'readinessProbe', 'startupProbe']) lines.push({ where: probe, words: words(at(c[probe], 'exec.command')) });
  for (const hook of ['postStart', 'preStop']) lines.push({ where: `${hook} hook`, words: words(at(c.lifecycle, `${hook}.exec.command`)) });
  return lines.filter((l) => l.words.length > 0);
}

/**
 * No container of any workload expands a Secret-backed environment variable on a command line, nor carries a Secret's
 * value there. argv is readable by every process of the node's user namespace (/proc/<pid>/cmdline, `ps`); the
 * kubelet replaces $(VAR) in command and args before the process starts (Kubernetes "Define a command and arguments
 * for a container": "$(VAR_NAME)"; `$$(VAR)` escapes it), and a shell's "$VAR" handed to another program puts the
 * value in that program's argv. A variable is Secret-backed when its env entry has valueFrom.secretKeyRef, or it
 * comes in through envFrom of a Secret (whose keys are known only for Secrets rendered here).
 */
export function checkNoSecretsOnCommandLines(ms: readonly Manifest[]): string[] {
  const problems: string[] = [];
  const secrets = renderedSecretValues(ms);
  for (const { owner, spec } of podSpecs(ms)) {
    for (const c of ['initContainers', 'containers', 'ephemeralContainers'].flatMap((k) => arr(spec[k]).map(obj))) {
      const who = `${describe(owner)} container ${show(c.name)}`;
      const secretVars = new Map<string, string>();
      for (const e of arr(c.env).map(obj)) {
        const ref = obj(at(e.valueFrom, 'secretKeyRef'));
        if (Object.keys(ref).length > 0) secretVars.set(str(e.name) ?? '', `Secret ${show(ref.name)} key ${show(ref.key)}`);
      }
      const unknownSecrets: string[] = [];
      for (const from of arr(c.envFrom).map(obj)) {
        const name = str(at(from.secretRef, 'name'));
        if (name === undefined) continue;
        const keys = secrets.get(name);
        if (keys) for (const k of keys.keys()) secretVars.set(`${str(from.prefix) ?? ''}${k}`, `Secret ${name} key ${k}`);
        else unknownSecrets.push(name);
      }
      for (const { where, words } of commandLines(c)) {
        const text = words.join('\n');
        for (const [v, source] of secretVars) {
          const kubelet = new RegExp(`(?<!\\$)\\$\\(${v}\\)`);
          const shell = new RegExp(`\\$\\{?${v}(?![A-Za-z0-9_])`);
          if (kubelet.test(text)) problems.push(`${who}'s ${where} puts $(${v}) (${source}) on a command line: the kubelet expands it into argv`);
          else if (shell.test(text)) problems.push(`${who}'s ${where} expands $${v} (${source}) in a shell script, which hands it to other programs' command lines`);
        }
        if (unknownSecrets.length > 0 && /\$\{?[A-Za-z_]|\$\(/.test(text)) {
          problems.push(`${who} takes all of Secret ${unknownSecrets.join(', ')} as environment, and its ${where} expands variables: name the variables with secretKeyRef so they can be checked`);
        }
        for (const [name, values] of secrets) {
          for (const [key, value] of values) {
            if (value.length >= 4 && text.includes(value)) problems.push(`${who}'s ${where} carries the value of Secret ${name} key ${key}`);
          }
        }
      }
    }
  }
  return problems;
}

/** The in-cluster Redis' start-up as rendered: the init containers' and the Redis container's argv and mounts. */
export interface RenderedRedisStartup {
  init: { argv: string[]; mounts: Map<string, string> }[];
  /** The Redis container; its environment's Secret-backed variables are marked, not valued. */
  server: { argv: string[]; mounts: Map<string, string>; env: Map<string, { value: string } | { fromSecret: true }> };
  probe: string[];
  /** ConfigMap files by mount path: what the kubelet would project into the pod. */
  configFiles: Map<string, string>;
  /** The Secret volumes by mount path, as Secret names. */
  secretMounts: Map<string, string>;
}

function mountsOf(c: Obj): Map<string, string> {
  return new Map(arr(c.volumeMounts).map(obj).map((m) => [str(m.mountPath) ?? '', str(m.name) ?? '']));
}

/** Reads the Redis StatefulSet's start-up from a rendering (fails when there is none). */
export function renderedRedisStartup(ms: readonly Manifest[]): RenderedRedisStartup {
  const s = redisStatefulSets(ms)[0];
  const server = s ? redisContainer(s) : undefined;
  if (!s || !server) throw new Error('the rendering has no Redis StatefulSet');
  const words = (v: Json | undefined) => arr(v).map((w) => (typeof w === 'string' ? w : show(w)));
  const volumes = new Map(arr(podSpec(s).volumes).map(obj).map((v) => [str(v.name) ?? '', v]));
  const configFiles = new Map<string, string>();
  const secretMounts = new Map<string, string>();
  for (const c of [...arr(podSpec(s).initContainers), ...arr(podSpec(s).containers)].map(obj)) {
    for (const [mountPath, volumeName] of mountsOf(c)) {
      const volume = volumes.get(volumeName);
      const cmName = str(at(volume, 'configMap.name'));
      const secretName = str(at(volume, 'secret.secretName'));
      if (secretName !== undefined) secretMounts.set(mountPath, secretName);
      const cm = ofKind(ms, 'ConfigMap', '').find((m) => str(at(m.doc, 'metadata.name')) === cmName);
      for (const [file, text] of Object.entries(obj(at(cm?.doc, 'data')))) if (typeof text === 'string') configFiles.set(`${mountPath}/${file}`, text);
    }
  }
  const env = new Map(arr(server.env).map(obj).map((e) => [str(e.name) ?? '', at(e.valueFrom, 'secretKeyRef') === undefined ? { value: str(e.value) ?? '' } : { fromSecret: true as const }]));
  return {
    init: arr(podSpec(s).initContainers).map(obj).map((c) => ({ argv: [...words(c.command), ...words(c.args)], mounts: mountsOf(c) })),
    server: { argv: [...words(server.command), ...words(server.args)], mounts: mountsOf(server), env },
    probe: words(at(server.readinessProbe, 'exec.command')),
    configFiles,
    secretMounts,
  };
}

/** Rewrites every container path under a mount point to the same path under `root` (longest mount paths first). */
function relocate(text: string, mountPaths: readonly string[], root: string): string {
  let out = text;
  for (const p of [...mountPaths].sort((a, b) => b.length - a.length)) {
    out = out.replace(new RegExp(`${p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}(?=/|$|\\s|")`, 'gm'), path.join(root, p));
  }
  return out;
}

/** A redis-server started from the rendered manifests, and what the start-up left behind. */
export interface RenderedRedis {
  /** redis-server, or undefined when an init container failed (as the kubelet would not start it either). */
  process: ChildProcess | undefined;
  /** The argv of every process the start-up ran that this machine could see (sampled from /proc while it ran). */
  commandLinesSeen: string[];
  /** The init containers' exit codes and stderr. */
  initResults: { status: number | null; stderr: string }[];
  /** Where the rendered password file ended up, and its mode. */
  renderedFiles: Map<string, number>;
  stop(): Promise<void>;
}

function cmdlineOf(pid: number | undefined): string | undefined {
  if (pid === undefined) return undefined;
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ').trim();
  } catch {
    return undefined;
  }
}

/**
 * Runs the rendered init containers' scripts, then the Redis container's command, on this machine: every mount path
 * relocated under `root`, every mounted Secret and Secret-backed variable holding `password`, and `--port`/`--bind` appended so it listens on
 * loopback. Samples /proc/<pid>/cmdline of each process it starts while they run. Stop it with `stop()` (by pid).
 */
export async function runRenderedRedis(startup: RenderedRedisStartup, root: string, password: string, port: number): Promise<RenderedRedis> {
  const mountPaths = [...new Set([...startup.server.mounts.keys(), ...startup.init.flatMap((i) => [...i.mounts.keys()]), ...startup.secretMounts.keys()])];
  for (const p of mountPaths) mkdirSync(path.join(root, p), { recursive: true });
  for (const [file, text] of startup.configFiles) writeFileSync(path.join(root, file), relocate(text, mountPaths, root));
  for (const [mountPath] of startup.secretMounts) writeFileSync(path.join(root, mountPath, 'password'), password, { mode: 0o440 });
  const commandLinesSeen: string[] = [];
  const initResults: { status: number | null; stderr: string }[] = [];
  for (const init of startup.init) {
    const [cmd = '', ...rest] = init.argv.map((a) => relocate(a, mountPaths, root));
    // Killed with the test process however it dies, as the server below; setpriv execs the script's shell in place,
    // so the pid sampled is the init process's own (its argv is setpriv's, which holds the script's, until the exec).
    const child = spawn(...diesWithParent(cmd, rest), { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
    const seen = cmdlineOf(child.pid);
    if (seen) commandLinesSeen.push(seen);
    // 'close', not 'exit': a process's exit can be reported before its stderr has been read to the end (seen on a
    // loaded machine: the init container's refusal arrived as an empty stderr).
    const status = await new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
    initResults.push({ status, stderr });
    if (status !== 0) break;
  }
  const renderedFiles = new Map<string, number>();
  for (const p of mountPaths) {
    const listing = spawnSync('find', [path.join(root, p), '-type', 'f', '-printf', '%m %p\n'], { encoding: 'utf8' }).stdout;
    for (const line of listing.split('\n').filter(Boolean)) {
      const [mode = '', file = ''] = line.split(' ');
      renderedFiles.set(file, parseInt(mode, 8));
    }
  }
  if (initResults.some((r) => r.status !== 0)) return { process: undefined, commandLinesSeen, initResults, renderedFiles, stop: () => Promise.resolve() };
  const [cmd = '', ...rest] = startup.server.argv.map((a) => relocate(a, mountPaths, root));
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH };
  for (const [name, source] of startup.server.env) env[name] = 'value' in source ? source.value : password;
  // Killed with the test process however it dies; setpriv execs redis-server in place, so the pid and the argv
  // sampled below are redis-server's once it runs.
  const server = spawn(...diesWithParent(cmd, [...rest, '--port', String(port), '--bind', '127.0.0.1']), { env, stdio: ['ignore', 'ignore', 'inherit'] });
  // redis-server rewrites its process title once started; its argv as exec'd is readable only until then.
  const until = Date.now() + 3000;
  while (Date.now() < until && server.exitCode === null) {
    const seen = cmdlineOf(server.pid);
    if (seen !== undefined && commandLinesSeen.at(-1) !== seen) commandLinesSeen.push(seen);
    if (seen?.includes(`:${port}`)) break;
  }
  return {
    process: server,
    commandLinesSeen,
    initResults,
    renderedFiles,
    stop: () => new Promise<void>((resolve) => {
      if (server.exitCode !== null || server.signalCode !== null) return resolve();
      server.once('exit', () => resolve());
      server.kill('SIGTERM');
    }),
  };
}
