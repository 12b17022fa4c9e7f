// Every WebGPU test runs in this one module, so that one worker thread drives the GL driver.
// deno test runs each module on a thread of its own; when several of those threads have used
// WebGPU (wgpu's GL backend on Mesa's EGL), their per-thread EGL state is freed twice as they exit
// and the process aborts with "double free or corruption" after every test passed (gdb: free()
// from __nptl_deallocate_tsd at thread exit). Measured with eight one-dispatch test modules: 15 of
// 120 runs aborted (parallel or not); the same eight tests in one module: 0 of 60.
import "./device_cases.ts";
import "./codec_cases.ts";
import "./attention_cases.ts";
import "./cache_cases.ts";
import "./model_cases.ts";
