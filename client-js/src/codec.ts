// How frames travel on the WebSocket: the client builds and reads every frame in the
// JSON mapping of docs/protocol.md ("WebSocket": one key, the operation's field name
// from rtc.proto, with snake_case fields), and a codec turns that into what the
// subprotocol carries. `jsonCodec` (rtc.v1.json, the default) is JSON text; the binary
// `protoCodec` (rtc.v1.proto) lives in proto.ts, a separate entry point, so that an app
// on the JSON mode does not carry the protobuf runtime.

/** A frame in the JSON mapping: `{"publish": {"req_id": 1, ...}}`. */
export type Frame = Record<string, Record<string, unknown>>;

export interface Codec {
  /** The WebSocket subprotocol it speaks. */
  readonly subprotocol: string;
  /** Whether it sends binary messages (the socket's binaryType is set to "arraybuffer"). */
  readonly binary: boolean;
  encode(frame: Frame): string | Uint8Array;
  /** The frame in a received message; undefined for one that is not a frame. */
  decode(data: unknown): Frame | undefined;
}

/** The gateway's JSON mode, `rtc.v1.json`: no library needed. */
export const jsonCodec: Codec = {
  subprotocol: "rtc.v1.json",
  binary: false,
  encode: (frame) => JSON.stringify(frame),
  decode: (data) => {
    try {
      return JSON.parse(String(data)) as Frame;
    } catch {
      return undefined;
    }
  },
};
