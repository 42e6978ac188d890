// The binary mode, `rtc.v1.proto`: each WebSocket message is one protobuf-encoded
// `rtc.v1.Frame` (docs/protocol.md, "WebSocket"). The code for the messages is
// generated from proto/rtc.proto into src/gen/ by `npm run generate` (buf with
// protoc-gen-es, run by every build), never written by hand. The client works in the
// JSON mapping (codec.ts); both directions here are driven by the generated
// descriptors, so a field added to rtc.proto needs no code here:
// - out, a frame is turned into protobuf-es's message and encoded by it;
// - in, the bytes are read straight into the JSON mapping by a reader of our own (a
//   plan per message type, compiled from the descriptors), three times faster than
//   protobuf-es's decoding followed by a conversion, which matters on every delivery.
//
// The mapping: proto field names, a frame's operation as its one key but any other
// oneof as an object under the oneof's name, 64-bit integers as numbers, enums as
// numbers except `Error.code` (its name without `ERROR_CODE_`), payloads as bytes one
// way (Message reads them lazily) and as text, {base64} or bytes the other.
//
//   import { Client } from "rtc-client";
//   import { protoCodec } from "rtc-client/proto";
//   const client = await Client.connect(url, { codec: protoCodec });

import { create, toBinary, ScalarType, type DescEnum, type DescField, type DescMessage, type DescOneof } from "@bufbuild/protobuf";
import type { Codec, Frame } from "./codec.js";
import { FrameSchema } from "./gen/rtc_pb.js";
import { fromUtf8, payloadBytes } from "./payload.js";

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

// ---- bytes -> JSON mapping ----
//
// Read straight from the wire into the JSON mapping, not through protobuf-es's message
// objects and a conversion (that took three times as long per delivery): a plan per
// message type, compiled once from the generated descriptors, gives each field number
// its name and how to read it. 64-bit integers become numbers (exact up to 2^53, as in
// the JSON mode); fields absent on the wire are absent here, as they may be in JSON.

type Kind = "scalar" | "enum" | "message";

interface ReadPlan {
  name: string;
  kind: Kind;
  scalar: ScalarType | undefined;
  /** For a named enum: its names by number. */
  names: Record<number, string> | undefined;
  message: DescMessage | undefined;
  list: boolean;
  /** For a map: how its key is read (its value is read as kind / scalar / message). */
  mapKey: ScalarType | undefined;
  /** Set for a wrapped oneof's member: the oneof's name. */
  oneof: string | undefined;
}

const readPlans = new WeakMap<DescMessage, Map<number, ReadPlan>>();

/** What `make` gives for `desc`, made once. */
function cached<T>(store: WeakMap<DescMessage, T>, desc: DescMessage, make: () => T): T {
  let v = store.get(desc);
  if (v === undefined) {
    v = make();
    store.set(desc, v);
  }
  return v;
}

function readPlan(desc: DescMessage): Map<number, ReadPlan> {
  return cached(readPlans, desc, () => {
    const plan = new Map<number, ReadPlan>();
    for (const f of desc.fields) {
      const s = f as unknown as Shape;
      const e = elementKind(f) === "enum" && s.enum && NAMED_ENUMS.has(s.enum.typeName) ? s.enum : undefined;
      plan.set(f.number, {
        name: f.name,
        kind: elementKind(f),
        scalar: s.scalar,
        names: e ? Object.fromEntries(e.values.map((v) => [v.number, v.localName])) : undefined,
        message: s.message,
        list: f.fieldKind === "list",
        mapKey: f.fieldKind === "map" ? f.mapKey : undefined,
        oneof: f.oneof && desc.typeName !== FLAT_ONEOF ? f.oneof.name : undefined,
      });
    }
    return plan;
  });
}

const TWO32 = 4294967296;

class Reader {
  pos = 0;
  /** The high 32 bits of the last varint read. */
  hi = 0;
  #view: DataView | undefined;
  constructor(readonly buf: Uint8Array) {}

  get view(): DataView {
    this.#view ??= new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength);
    return this.#view;
  }

  /** A varint's low 32 bits, unsigned; its high ones in `hi`. */
  varint(): number {
    const b = this.buf;
    let lo = 0;
    for (let shift = 0; shift < 28; shift += 7) {
      const byte = b[this.pos++]!;
      lo |= (byte & 0x7f) << shift;
      if (byte < 0x80) {
        this.hi = 0;
        return lo >>> 0;
      }
    }
    const fifth = b[this.pos++]!;
    lo |= (fifth & 0x0f) << 28;
    let hi = (fifth & 0x7f) >> 4;
    if (fifth >= 0x80) {
      for (let shift = 3; ; shift += 7) {
        if (shift > 31) throw new Error("varint too long");
        const byte = b[this.pos++]!;
        hi |= (byte & 0x7f) << shift;
        if (byte < 0x80) break;
      }
    }
    this.hi = hi >>> 0;
    return lo >>> 0;
  }

  /** The bytes of a length-delimited field (a view of the message, not a copy). */
  chunk(): Uint8Array {
    const n = this.varint();
    const start = this.pos;
    this.pos += n;
    if (this.pos > this.buf.length) throw new Error("truncated");
    return this.buf.subarray(start, this.pos);
  }

  string(): string {
    const c = this.chunk();
    // Short ASCII (topics, IDs) without the decoder's per-call cost.
    if (c.length <= 64) {
      let s = "";
      for (let i = 0; i < c.length; i++) {
        const ch = c[i]!;
        if (ch >= 0x80) return fromUtf8(c);
        s += String.fromCharCode(ch);
      }
      return s;
    }
    return fromUtf8(c);
  }

  skip(wire: number): void {
    if (wire === 0) this.varint();
    else if (wire === 1) this.pos += 8;
    else if (wire === 2) this.chunk();
    else if (wire === 5) this.pos += 4;
    else throw new Error(`wire type ${wire}`);
  }

  scalar(t: ScalarType): unknown {
    switch (t) {
      case ScalarType.STRING:
        return this.string();
      case ScalarType.BYTES:
        return this.chunk();
      case ScalarType.BOOL:
        return (this.varint() | this.hi) !== 0;
      case ScalarType.UINT32:
        return this.varint();
      case ScalarType.INT32:
        return this.varint() | 0;
      case ScalarType.UINT64:
        return this.varint() + this.hi * TWO32;
      case ScalarType.INT64: {
        const lo = this.varint();
        const hi = this.hi;
        return hi & 0x80000000 ? -((~hi >>> 0) * TWO32 + (~lo >>> 0) + 1) : hi * TWO32 + lo;
      }
      case ScalarType.SINT32: {
        const n = this.varint();
        return (n >>> 1) ^ -(n & 1);
      }
      case ScalarType.SINT64: {
        const u = this.varint() + this.hi * TWO32;
        return u % 2 ? -(u + 1) / 2 : u / 2;
      }
      default:
        return this.fixed(t);
    }
  }

  fixed(t: ScalarType): unknown {
    const at = this.pos;
    const wide = t === ScalarType.FIXED64 || t === ScalarType.SFIXED64 || t === ScalarType.DOUBLE;
    this.pos += wide ? 8 : 4;
    if (this.pos > this.buf.length) throw new Error("truncated");
    const v = this.view;
    switch (t) {
      case ScalarType.FIXED32:
        return v.getUint32(at, true);
      case ScalarType.SFIXED32:
        return v.getInt32(at, true);
      case ScalarType.FLOAT:
        return v.getFloat32(at, true);
      case ScalarType.DOUBLE:
        return v.getFloat64(at, true);
      case ScalarType.FIXED64:
        return v.getUint32(at, true) + v.getUint32(at + 4, true) * TWO32;
      default:
        return v.getUint32(at, true) + v.getInt32(at + 4, true) * TWO32;
    }
  }
}

/** One value of field `p` (an element, for lists and maps). */
function readValue(r: Reader, p: ReadPlan): unknown {
  if (p.kind === "message") {
    const c = r.chunk();
    return readMessage(p.message!, new Reader(c));
  }
  if (p.kind === "enum") {
    const n = r.varint() | 0;
    return p.names ? (p.names[n] ?? "UNSPECIFIED") : n;
  }
  return r.scalar(p.scalar!);
}

/** A map entry: key (field 1) and value (field 2), either may be absent. */
function readEntry(r: Reader, p: ReadPlan): [string, unknown] {
  const e = new Reader(r.chunk());
  let key: unknown = p.mapKey === ScalarType.STRING ? "" : 0;
  let value: unknown = p.kind === "message" ? {} : p.kind === "scalar" && p.scalar === ScalarType.STRING ? "" : 0;
  while (e.pos < e.buf.length) {
    const tag = e.varint();
    if (tag >>> 3 === 1) key = e.scalar(p.mapKey!);
    else if (tag >>> 3 === 2) value = readValue(e, p);
    else e.skip(tag & 7);
  }
  return [String(key), value];
}

function readMessage(desc: DescMessage, r: Reader): Plain {
  const plan = readPlan(desc);
  const out: Plain = {};
  const end = r.buf.length;
  while (r.pos < end) {
    const tag = r.varint();
    const p = plan.get(tag >>> 3);
    if (!p) {
      r.skip(tag & 7);
      continue;
    }
    if (p.mapKey !== undefined) {
      const [k, v] = readEntry(r, p);
      ((out[p.name] ??= {}) as Plain)[k] = v;
    } else if (p.list) {
      const list = (out[p.name] ??= []) as unknown[];
      if ((tag & 7) === 2 && p.kind !== "message" && p.scalar !== ScalarType.STRING && p.scalar !== ScalarType.BYTES) {
        // Packed: one length-delimited run of values.
        const packed = new Reader(r.chunk());
        while (packed.pos < packed.buf.length) list.push(readValue(packed, p));
      } else {
        list.push(readValue(r, p));
      }
    } else if (p.oneof) {
      out[p.oneof] = { [p.name]: readValue(r, p) };
    } else {
      out[p.name] = readValue(r, p);
    }
  }
  if (r.pos > end) throw new Error("truncated");
  return out;
}

// ---- JSON mapping -> protobuf message ----

const byName = new WeakMap<DescMessage, Map<string, DescField>>();
const oneofsByName = new WeakMap<DescMessage, Map<string, DescOneof>>();

const fieldsOf = (desc: DescMessage) => cached(byName, desc, () => new Map(desc.fields.map((f) => [f.name, f])));
const oneofsOf = (desc: DescMessage) => cached(oneofsByName, desc, () => new Map(desc.oneofs.map((o) => [o.name, o])));

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
      return readMessage(FrameSchema, new Reader(bytes)) as Frame;
    } catch {
      return undefined;
    }
  },
};
