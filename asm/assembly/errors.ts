// Error reporting shared by the kernels: a kernel returns −1 on success, else the element index
// (encode) or group index (decode) of the first problem, and sets the kind here.

/** 1: non-finite input; 2: input out of the format's range; 3: corrupt group header. */
export let errorKind: i32 = 0;

/** Records an error kind and passes the index through. */
export function fail(kind: i32, index: i32): i32 {
  errorKind = kind;
  return index;
}

/** The kind of the last error a kernel returned. */
export function lastErrorKind(): i32 {
  return errorKind;
}
