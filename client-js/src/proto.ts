// The binary mode, `rtc.v1.proto`: each WebSocket message is one protobuf-encoded
// `rtc.v1.Frame` (docs/protocol.md, "WebSocket"). The code for the messages is
// generated from proto/rtc.proto into src/gen/ by `npm run generate` (buf with
// protoc-gen-es, run by every build), never written by hand; this module converts
// between those messages and the JSON mapping the client works in (codec.ts), by
// walking the generated descriptors, so a field added to rtc.proto needs no code here.
//
// The conversion follows the JSON mapping: proto field names, a frame's operation as its
// one key but any other oneof as an object under the oneof's name, 64-bit integers as
// numbers, enums as numbers except `Error.code` (its name without `ERROR_CODE_`),
// payloads as bytes one way (Message reads them lazily) and as text, {base64} or bytes
// the other.
//
//   import { Client } from "rtc-client";
//   import { protoCodec } from "rtc-client/proto";
//   const client = await Client.connect(url, { codec: protoCodec });

import { create, fromBinary, toBinary, ScalarType, type DescEnum, type DescField, type DescMessage, type DescOneof } from "@bufbuild/protobuf";
import type { Codec, Frame } from "./codec.js";
import { FrameSchema } from "./gen/rtc_pb.js";
import { payloadBytes } from "./payload.js";

/** What a field holds: its element's kind for lists and maps. */
interface Shape {
  readonly scalar?: ScalarType;
  readonly enum?: DescEnum;
  readonly message?: DescMessage;
}

type Plain = Record<string, unknown>;

const WIDE = new Set([ScalarType.INT64, ScalarType.UINT64, ScalarType.SINT64, ScalarType.FIXED64, ScalarType.SFIXED64]);
/** The one message whose oneof is flattened (a frame is `{"publish": {...}}`); any other
 *  oneof is an object under its own name (`{"position": {"first": true}}`). */
const FLAT_ONEOF = "rtc.v1.Frame";
/** Enums whose JSON form is the value's name (without the shared prefix). */
const NAMED_ENUMS = new Set(["rtc.v1.ErrorCode"]);

function elementKind(f: DescField): "scalar" | "enum" | "message" {
  if (f.fieldKind === "list") return f.listKind;
  if (f.fieldKind === "map") return f.mapKind;
  return f.fieldKind;
}

// ---- protobuf message -> JSON mapping ----

function outValue(kind: "scalar" | "enum" | "message", s: Shape, v: unknown): unknown {
  if (kind === "message") return toPlain(s.message!, v as Plain);
  if (kind === "enum") {
    return s.enum && NAMED_ENUMS.has(s.enum.typeName) ? (s.enum.value[v as number]?.localName ?? "UNSPECIFIED") : v;
  }
  return typeof v === "bigint" ? Number(v) : v;
}

function outField(f: DescField, v: unknown): unknown {
  const kind = elementKind(f);
  const s = f as unknown as Shape;
  if (f.fieldKind === "list") return (v as unknown[]).map((e) => outValue(kind, s, e));
  if (f.fieldKind === "map") {
    const out: Plain = {};
    for (const [k, e] of Object.entries(v as Plain)) out[k] = outValue(kind, s, e);
    return out;
  }
  return outValue(kind, s, v);
}

function toPlain(desc: DescMessage, msg: Plain): Plain {
  const out: Plain = {};
  for (const f of desc.fields) {
    if (f.oneof) continue;
    const v = msg[f.localName];
    if (v !== undefined) out[f.name] = outField(f, v);
  }
  for (const o of desc.oneofs) {
    const { case: c, value } = msg[o.localName] as { case?: string; value?: unknown };
    const f = c === undefined ? undefined : o.fields.find((x) => x.localName === c);
    if (!f) continue;
    if (desc.typeName === FLAT_ONEOF) out[f.name] = outField(f, value);
    else out[o.name] = { [f.name]: outField(f, value) };
  }
  return out;
}

// ---- JSON mapping -> protobuf message ----

const byName = new WeakMap<DescMessage, Map<string, DescField>>();

const oneofsByName = new WeakMap<DescMessage, Map<string, DescOneof>>();

function fieldsOf(desc: DescMessage): Map<string, DescField> {
  let m = byName.get(desc);
  if (!m) {
    m = new Map(desc.fields.map((f) => [f.name, f]));
    byName.set(desc, m);
  }
  return m;
}

function oneofsOf(desc: DescMessage): Map<string, DescOneof> {
  let m = oneofsByName.get(desc);
  if (!m) {
    m = new Map(desc.oneofs.map((o) => [o.name, o]));
    oneofsByName.set(desc, m);
  }
  return m;
}

function inValue(kind: "scalar" | "enum" | "message", s: Shape, v: unknown): unknown {
  if (kind === "message") return fromPlain(s.message!, v as Plain);
  if (kind === "enum") {
    if (typeof v !== "string") return v;
    return s.enum?.values.find((e) => e.localName === v || e.name === v)?.number ?? 0;
  }
  if (s.scalar === ScalarType.BYTES) return payloadBytes(v);
  if (s.scalar !== undefined && WIDE.has(s.scalar)) return BigInt(Math.trunc(Number(v)));
  return v;
}

function inField(f: DescField, v: unknown): unknown {
  const kind = elementKind(f);
  const s = f as unknown as Shape;
  if (f.fieldKind === "list") return (v as unknown[]).map((e) => inValue(kind, s, e));
  if (f.fieldKind === "map") {
    const out: Plain = {};
    for (const [k, e] of Object.entries(v as Plain)) out[k] = inValue(kind, s, e);
    return out;
  }
  return inValue(kind, s, v);
}

function fromPlain(desc: DescMessage, plain: Plain): Plain {
  const msg = create(desc) as unknown as Plain;
  const fields = fieldsOf(desc);
  const oneofs = oneofsOf(desc);
  for (const [key, v] of Object.entries(plain)) {
    if (v === undefined || v === null) continue;
    const o = desc.typeName === FLAT_ONEOF ? undefined : oneofs.get(key);
    if (o) {
      // `{"position": {"seq": 5}}`: the case is the one key inside.
      const [[name, inner] = []] = Object.entries(v as Plain);
      const f = name === undefined ? undefined : fields.get(name);
      if (f && f.oneof === o) msg[o.localName] = { case: f.localName, value: inField(f, inner) };
      continue;
    }
    const f = fields.get(key);
    if (!f) continue;
    const value = inField(f, v);
    if (f.oneof) msg[f.oneof.localName] = { case: f.localName, value };
    else msg[f.localName] = value;
  }
  return msg;
}

function bytesOf(data: unknown): Uint8Array | undefined {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return undefined;
}

/** The gateway's binary mode, `rtc.v1.proto`. */
export const protoCodec: Codec = {
  subprotocol: "rtc.v1.proto",
  binary: true,
  encode: (frame: Frame) => toBinary(FrameSchema, fromPlain(FrameSchema, frame) as never),
  decode: (data: unknown) => {
    const bytes = bytesOf(data);
    if (!bytes) return undefined;
    try {
      return toPlain(FrameSchema, fromBinary(FrameSchema, bytes) as unknown as Plain) as Frame;
    } catch {
      return undefined;
    }
  },
};
