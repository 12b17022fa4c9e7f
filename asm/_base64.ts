/**
 * Base64 without Deno.* APIs (shared by the build script and the runtime loader).
 *
 * Browser compatible.
 *
 * @module
 */

/**
 * @param bytes data
 * @returns standard base64 with padding
 */
export function encodeBase64(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}
