// rtc-client: a client for the rtc broker over its WebSocket gateway, for browsers,
// Node 20+ and React Native. See README.md.

export { Client } from "./client.js";
export type {
  ConnectionState,
  ConnectOptions,
  ConsumerOptions,
  PresenceEvent,
  PresenceInfo,
  PresenceMember,
  PubAck,
  PublishOptions,
  Response,
  SubscribeOptions,
  WebSocketConstructor,
  WebSocketLike,
} from "./client.js";
export type { ReconnectPolicy } from "./backoff.js";
export { jsonCodec } from "./codec.js";
export type { Codec, Frame } from "./codec.js";
export { ClosedError, OutboxFullError, RtcError } from "./errors.js";
export { Message } from "./message.js";
export { IndexedDbStorage } from "./idb.js";
export type { IdbFactory } from "./idb.js";
export { MemoryStorage } from "./outbox.js";
export type { KeyValueStorage } from "./outbox.js";
export type { Payload } from "./payload.js";
export { Subscription } from "./subscription.js";
export type { StartAt } from "./subscription.js";
