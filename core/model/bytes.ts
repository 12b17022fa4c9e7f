/**
 * The byte input of the file parsers: a Uint8Array, or an ArrayBuffer (what `fetch().arrayBuffer()`
 * gives) viewed whole. Anything else is refused by name.
 *
 * Browser compatible.
 *
 * @module
 */

import { ShapeError, typeName } from "../errors.ts";

/**
 * @param x the input
 * @param what its name in the message
 * @returns the bytes
 * @throws ShapeError for anything but a Uint8Array or an ArrayBuffer
 */
export function asBytes(x: unknown, what: string): Uint8Array {
  if (x instanceof Uint8Array) return x;
  if (x instanceof ArrayBuffer) return new Uint8Array(x);
  throw new ShapeError(`${what} must be a Uint8Array or an ArrayBuffer, got ${typeName(x)}`);
}
