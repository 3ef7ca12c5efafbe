// What an image holds against what its processes import: functions/Dockerfile copies a few folders per image (so a
// change rebuilds only the images it touches), and a module one entry point imports from outside them would only
// fail when the pod starts. This follows every entry point a rendered workload runs through its relative imports,
// and checks each module is copied into the image and each package is a production dependency (`npm ci --omit=dev`).
import { existsSync, readFileSync } from 'node:fs';
import { builtinModules } from 'node:module';
import path from 'node:path';

/** One stage of a Dockerfile: its name, the stage or image it starts from, and what it copies from the build context. */
export interface DockerStage {
  name: string;
  base: string;
  /** Build-context paths its COPY/ADD instructions take (COPY --from takes from another stage and is left out). */
  contextCopies: string[];
}

function substitute(text: string, vars: Record<string, string>): string {
  return text.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)/g, (_, a: string | undefined, b: string | undefined) => vars[a ?? b ?? ''] ?? '');
}

/** Parses the stages of a Dockerfile, with ARGs taking `buildArgs` over their defaults. */
export function parseDockerfile(text: string, buildArgs: Record<string, string>): DockerStage[] {
  const lines = text
    .replace(/\\\r?\n/g, ' ')
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'));
  const globalArgs: Record<string, string> = {};
  let stageArgs: Record<string, string> = {};
  const stages: DockerStage[] = [];
  for (const line of lines) {
    const [word = '', ...rest] = line.split(/\s+/);
    const instruction = word.toUpperCase();
    const vars = { ...globalArgs, ...stageArgs };
    if (instruction === 'ARG') {
      const [name = '', dflt] = (rest[0] ?? '').split('=');
      // A stage's bare `ARG NAME` re-imports the global value (or the build arg).
      const value = buildArgs[name] ?? (dflt !== undefined ? substitute(dflt, vars) : globalArgs[name] ?? '');
      if (stages.length === 0) globalArgs[name] = value;
      else stageArgs[name] = value;
    } else if (instruction === 'FROM') {
      const args = rest.filter((r) => !r.startsWith('--'));
      stageArgs = {};
      stages.push({
        name: args[1]?.toUpperCase() === 'AS' ? (args[2] ?? '') : String(stages.length),
        base: substitute(args[0] ?? '', globalArgs),
        contextCopies: [],
      });
    } else if ((instruction === 'COPY' || instruction === 'ADD') && stages.length > 0) {
      if (rest.some((r) => r.startsWith('--from='))) continue;
      const operands = rest.filter((r) => !r.startsWith('--')).map((r) => substitute(r, vars));
      stages[stages.length - 1]?.contextCopies.push(...operands.slice(0, -1));
    }
  }
  return stages;
}

/** Everything a target stage takes from the build context: its own copies and those of the stages it starts from. */
export function contextCopiesOf(stages: readonly DockerStage[], target: string): string[] {
  const copies: string[] = [];
  let stage = stages.find((s) => s.name === target);
  const seen = new Set<string>();
  while (stage && !seen.has(stage.name)) {
    seen.add(stage.name);
    copies.push(...stage.contextCopies);
    const base = stage.base;
    stage = stages.find((s) => s.name === base);
  }
  return copies.map((c) => path.posix.normalize(c).replace(/\/$/, ''));
}

/** The modules an entry point loads, transitively through relative imports, and the packages they import. */
export function importClosure(repoRoot: string, entry: string): { modules: string[]; packages: string[]; missing: string[] } {
  const modules = new Set<string>();
  const packages = new Set<string>();
  const missing: string[] = [];
  const builtins = new Set(builtinModules);
  // Static imports and re-exports (`import type` and `export type` are erased by type stripping), and dynamic ones.
  const statement = /^\s*(?:import|export)\s+(type\s+)?(?:[^'";]*?\s+from\s+)?['"]([^'"]+)['"]/gm;
  const dynamic = /\bimport\(\s*['"]([^'"]+)['"]\s*\)/g;
  const visit = (file: string) => {
    if (modules.has(file)) return;
    const abs = path.join(repoRoot, file);
    if (!existsSync(abs)) {
      missing.push(file);
      return;
    }
    modules.add(file);
    const text = readFileSync(abs, 'utf8');
    const specifiers = [...[...text.matchAll(statement)].filter((m) => m[1] === undefined).map((m) => m[2] ?? ''), ...[...text.matchAll(dynamic)].map((m) => m[1] ?? '')];
    for (const spec of specifiers) {
      if (spec.startsWith('.')) visit(path.posix.normalize(path.posix.join(path.posix.dirname(file), spec)));
      else if (!spec.startsWith('node:') && !builtins.has(spec)) packages.add(spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : (spec.split('/')[0] ?? spec));
    }
  };
  visit(path.posix.normalize(entry));
  return { modules: [...modules].sort(), packages: [...packages].sort(), missing };
}

/** One image as skaffold builds it from functions/Dockerfile, and the entry points its workloads run. */
export interface ImageUse {
  image: string;
  target: string;
  buildArgs: Record<string, string>;
  entries: string[];
}

/** Every module each image's entry points import is copied into it, and every package they import is a production dependency. */
export function checkImageContents(repoRoot: string, dockerfile: { path: string; text: string }, uses: readonly ImageUse[]): string[] {
  const pkg = JSON.parse(readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as { dependencies?: Record<string, string> };
  const production = new Set(Object.keys(pkg.dependencies ?? {}));
  const problems: string[] = [];
  for (const use of uses) {
    const copies = contextCopiesOf(parseDockerfile(dockerfile.text, use.buildArgs), use.target);
    if (copies.length === 0) problems.push(`image ${use.image}: ${dockerfile.path} has no stage ${use.target} copying anything`);
    const inImage = (file: string) => copies.some((c) => file === c || file.startsWith(`${c}/`));
    for (const entry of use.entries) {
      const { modules, packages, missing } = importClosure(repoRoot, entry);
      for (const m of missing) problems.push(`image ${use.image}: ${entry} imports ${m}, which does not exist`);
      for (const m of modules) if (!inImage(m)) problems.push(`image ${use.image}: ${entry} imports ${m}, which the image does not hold`);
      for (const p of packages) if (!production.has(p)) problems.push(`image ${use.image}: ${entry} imports package ${p}, which is not a production dependency`);
    }
  }
  return problems;
}

/** What each image skaffold builds from `dockerfile` runs: its target, build args, and every entry point of the workloads using it. */
export function imageUses(artifacts: readonly Record<string, unknown>[], dockerfile: string, workloads: readonly { image: string; entry: string }[]): ImageUse[] {
  const uses: ImageUse[] = [];
  for (const a of artifacts) {
    const docker = (a.docker ?? {}) as { dockerfile?: string; target?: string; buildArgs?: Record<string, string> };
    if (docker.dockerfile !== dockerfile || typeof a.image !== 'string') continue;
    const image = a.image;
    const entries = [...new Set(workloads.filter((w) => w.image === image).map((w) => w.entry))].sort();
    uses.push({ image, target: docker.target ?? '', buildArgs: docker.buildArgs ?? {}, entries });
  }
  return uses;
}
