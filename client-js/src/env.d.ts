// The few host APIs the client uses, declared here instead of taking the DOM or Node
// typings: browsers, Node 20+ and React Native all have them. Nothing else is assumed.

declare class TextEncoder {
  encode(input?: string): Uint8Array;
}

declare class TextDecoder {
  constructor(label?: string, options?: { fatal?: boolean });
  decode(input?: Uint8Array): string;
}

declare function setTimeout(handler: () => void, ms?: number): unknown;
declare function clearTimeout(id: unknown): void;

declare const console: {
  warn(...args: unknown[]): void;
};

declare class URLSearchParams {
  constructor(init?: Record<string, string>);
  set(name: string, value: string): void;
  toString(): string;
}
