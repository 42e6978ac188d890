// Errors the client reports. A broker refusal keeps the protocol's stable code
// (docs/protocol.md, "Error codes"), so an app can branch on it.

/** The broker refused a request: `code` is the protocol's name for it (`NOT_FOUND`, ...). */
export class RtcError extends Error {
  readonly code: string;
  /** The topic concerned, for TOPIC_DELETED and UNRECOVERABLE_POSITION. */
  readonly topic: string;
  constructor(code: string, message: string, topic = "") {
    super(`${code}: ${message}`);
    this.name = "RtcError";
    this.code = code;
    this.topic = topic;
  }
}

/** The connection closed before the request was answered (its effect is unknown). */
export class ClosedError extends RtcError {
  constructor(why: string) {
    super("CLOSED", why);
    this.name = "ClosedError";
  }
}

/** The outbox holds its maximum of unacknowledged publishes; nothing was queued. */
export class OutboxFullError extends RtcError {
  constructor(max: number) {
    super("OUTBOX_FULL", `the outbox holds ${max} unacknowledged publishes, its limit`);
    this.name = "OutboxFullError";
  }
}
