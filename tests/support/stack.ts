// The stack launcher lives with `npm start` (functions/local-stack/stack.ts); tests import it from here.
export * from '../../functions/local-stack/stack.ts';
