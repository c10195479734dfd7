"""`toonq gpu-check`: what a CUDA machine does with toonq, in one run of at most 8 minutes.

Six parts, each a module with `run(CheckContext) -> Section`, written to one JSON report (and a
Markdown one beside it) under `.toonq/gpu-check/`:

* `fixture`: the birefnet-dev fixture on the GPU in fp32 against the reference CPU outputs;
* `precision`: fp16 and bf16 masks against fp32 on ToonOut's architecture (random weights);
* `throughput`: images/s and peak memory by precision x batch size, and with torch.compile;
* `oom`: a real CUDA out-of-memory split in the worker's GPU loop;
* `overlap`: whether a job's device work (preparing an image, bringing its alpha back) waits
  behind the batch the GPU loop is running;
* `end_to_end`: jobs/s through a worker process in the embedded mode, and its ratio to the
  model's own images/s.

`plan` holds the sizes (`FULL` for a GPU, `QUICK` to run every path on a CPU in seconds) and
`runner` the order and the time limit.
"""
