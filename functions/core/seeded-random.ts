// A seedable PRNG for simulations (fault draws, the demo's behaviour): a seed must replay a run exactly, which
// Math.random cannot; cryptographic quality is not needed.

/** mulberry32: returns a generator of numbers in [0, 1) fully determined by `seed`. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
