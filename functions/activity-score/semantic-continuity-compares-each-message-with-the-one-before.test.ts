import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LEXICAL_SKETCH_SIZE, lexicalSimilarity, sketchText } from './lexical.ts';
import {
  applyActivity,
  cosine,
  DEFAULT_SCORING_POLICY as policy,
  initialContext,
  MAX_EMBEDDING_DIMENSIONS,
  score,
  type ActivityContext,
  type ActivityEvent,
} from './scoring.ts';

const T0 = Date.parse('2025-01-01T00:00:00Z');

function messages(...bodies: Array<Omit<ActivityEvent, 'kind' | 'at'>>): ActivityContext {
  return bodies.reduce(
    (ctx, body, i) => applyActivity(ctx, { kind: 'message', at: T0 + 1000 + i * 20_000, ...body }, policy),
    initialContext(T0, policy),
  );
}

const semanticOf = (ctx: ActivityContext) => score(ctx, ctx.lastEventAt, policy).components.semantic;

// Deterministic pseudo-random unit-ish vectors: `topic` picks a direction, `noise` perturbs it.
function vector(seed: number, dims: number): number[] {
  let state = seed >>> 0 || 1;
  return Array.from({ length: dims }, () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state / 2 ** 32 - 0.5;
  });
}
const near = (base: number[], seed: number, amount: number) => vector(seed, base.length).map((x, i) => base[i]! + amount * x);

test('consecutive messages with similar embeddings are continuous, unrelated ones are not', () => {
  const topic = vector(1, 384);
  const similar = messages({ embedding: topic }, { embedding: near(topic, 2, 0.2) }, { embedding: near(topic, 3, 0.2) });
  const unrelated = messages({ embedding: vector(10, 384) }, { embedding: vector(11, 384) }, { embedding: vector(12, 384) });
  assert.ok(semanticOf(similar) > 0.9, `similar: ${semanticOf(similar)}`);
  assert.ok(semanticOf(unrelated) < 0.1, `unrelated: ${semanticOf(unrelated)}`);
  assert.equal(similar.semanticSamples, 2);
});

test('without embeddings, the trigram fallback tells a follow-up from a change of subject', () => {
  const followUp = messages(
    { text: 'How do I deploy the session reaper to a Knative cluster?' },
    { text: 'And how do I deploy it to the cluster with Istio enabled?' },
  );
  const changeOfSubject = messages(
    { text: 'How do I deploy the session reaper to a Knative cluster?' },
    { text: 'What is a good recipe for banana bread with walnuts?' },
  );
  assert.ok(semanticOf(followUp) > 0.6, `follow-up: ${semanticOf(followUp)}`);
  assert.ok(semanticOf(changeOfSubject) < 0.1, `change of subject: ${semanticOf(changeOfSubject)}`);
});

test('the trigram similarity survives inflection and typos and ignores case and punctuation', () => {
  const a = sketchText('Deploying the deployment, DEPLOYED!');
  const b = sketchText('deploy the deplyoment');
  const c = sketchText('banana bread recipe');
  assert.ok(lexicalSimilarity(a, b)! > 0.4, `${lexicalSimilarity(a, b)}`);
  assert.ok(lexicalSimilarity(a, c)! < 0.1, `${lexicalSimilarity(a, c)}`);
  assert.equal(lexicalSimilarity(sketchText('Same Words.'), sketchText('same   words')), 1);
  assert.equal(lexicalSimilarity(sketchText('?!…'), a), undefined, 'a text with no letters has nothing to compare');
});

test('a trigram sketch stays bounded for long texts and still estimates overlap closely', () => {
  const words = Array.from({ length: 600 }, (_, i) => `token${i.toString(36)}`);
  const left = words.slice(0, 450).join(' ');
  const right = words.slice(150).join(' ');
  const bounded = [sketchText(left), sketchText(right)] as const;
  const exact = [sketchText(left, Number.MAX_SAFE_INTEGER), sketchText(right, Number.MAX_SAFE_INTEGER)] as const;
  assert.equal(bounded[0].hashes.length, LEXICAL_SKETCH_SIZE);
  assert.ok(bounded[0].size > LEXICAL_SKETCH_SIZE);
  const estimate = lexicalSimilarity(...bounded)!;
  const truth = lexicalSimilarity(...exact)!;
  assert.ok(Math.abs(estimate - truth) < 0.15, `estimate ${estimate} vs exact ${truth}`);
});

test('an embedding of a different dimension is a discontinuity, not a crash', () => {
  const topic = vector(1, 384);
  const switched = messages({ embedding: topic }, { embedding: near(topic, 2, 0.1) }, { embedding: vector(1, 768) });
  const steady = messages({ embedding: topic }, { embedding: near(topic, 2, 0.1) }, { embedding: near(topic, 3, 0.1) });
  assert.equal(switched.semanticSamples, 2, 'the pair across the switch was counted, as unrelated');
  assert.ok(semanticOf(switched) < semanticOf(steady) - 0.3, `${semanticOf(switched)} vs ${semanticOf(steady)}`);
  assert.equal(switched.lastEmbedding?.length, 768, 'the new embedding is the reference for the next message');

  const next = applyActivity(switched, { kind: 'message', at: switched.lastEventAt + 1000, embedding: near(vector(1, 768), 4, 0.1) }, policy);
  assert.ok(semanticOf(next) > semanticOf(switched), 'comparison resumes in the new dimension');
});

test('when dimensions differ but both messages have text, the text is compared instead', () => {
  const text = 'Please refactor this parser to use async iterators';
  const ctx = messages({ embedding: vector(1, 384), text }, { embedding: vector(1, 768), text: `${text} again` });
  assert.ok(semanticOf(ctx) > 0.8, `${semanticOf(ctx)}`);
});

test('embeddings that cannot be compared are ignored as if absent', () => {
  for (const embedding of [[], [0, 0, 0], [1, Number.NaN, 2], [1, Number.POSITIVE_INFINITY], new Array<number>(MAX_EMBEDDING_DIMENSIONS + 1).fill(1)]) {
    const ctx = messages({ embedding: [1, 2, 3] }, { embedding });
    assert.equal(ctx.semanticSamples, 0, `embedding of length ${embedding.length}`);
    assert.deepEqual(ctx.lastEmbedding, [1, 2, 3]);
  }
  assert.equal(cosine([1e300, 1e300], [1e300, 1e300]), 1, 'huge components do not overflow');
});

test('a message with neither text nor embedding leaves continuity as it was', () => {
  const topic = vector(1, 64);
  const before = messages({ embedding: topic }, { embedding: near(topic, 2, 0.1) });
  const after = applyActivity(before, { kind: 'message', at: before.lastEventAt + 1000 }, policy);
  assert.equal(after.semantic, before.semantic);
  assert.equal(after.semanticSamples, before.semanticSamples);
  assert.equal(after.lastMessageAt, before.lastMessageAt);
});

test('with no pair of messages compared yet, semantic weight is spread over the other components', () => {
  const single = messages({ text: 'hello there' });
  const result = score(single, single.lastEventAt, policy);
  assert.equal(result.weights.semantic, 0);
  assert.ok(Math.abs(result.weights.behavior + result.weights.timing - 1) < 1e-12);
  const pair = messages({ text: 'hello there' }, { text: 'hello again there' });
  assert.ok(score(pair, pair.lastEventAt, policy).weights.semantic > 0.3);
});

test('continuity fades with time since the last message', () => {
  const topic = vector(1, 64);
  const ctx = messages({ embedding: topic }, { embedding: near(topic, 2, 0.1) });
  const fresh = score(ctx, ctx.lastEventAt, policy).components.semantic;
  const halfLater = score(ctx, ctx.lastEventAt + policy.semantic.halfLifeMs, policy).components.semantic;
  assert.ok(Math.abs(halfLater - fresh / 2) < 1e-9, `${fresh} -> ${halfLater}`);
});
