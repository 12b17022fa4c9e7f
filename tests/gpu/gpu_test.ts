// Every WebGPU test runs in this one module, so that a single deno test thread drives the driver.
// With wgpu's GL backend, libglvnd keeps per-thread state that is freed twice when several threads
// that used WebGPU exit, and the process aborts with "double free or corruption" after every test
// passed (gdb: free() from __nptl_deallocate_tsd at thread exit; libEGL and libGLdispatch register
// those keys). An eight-module stress test aborted in 10–20 of 60 runs on GL, 0 of 60 with the
// same tests in one module or with DENO_WEBGPU_BACKEND=vulkan (lavapipe), which .ci/run selects.
import "./device_cases.ts";
import "./codec_cases.ts";
import "./attention_cases.ts";
import "./cache_cases.ts";
import "./model_cases.ts";
import "./choose_backend_cases.ts";
import "./transfer_cases.ts";
import "./random_ops_cases.ts";
import "./huge_shapes_cases.ts";
import "./loop_limit_cases.ts";
