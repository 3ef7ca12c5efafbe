// The local Broker's view of CloudEvents on the wire lives in core (functions/core/cloudevent-wire.ts), since the
// deployed dead-letter receiver reads them the same way; this name stays so the local stack's imports keep working.
export * from '../../functions/core/cloudevent-wire.ts';
