"""A throw-away toonq deployment for the system tests, the benchmarks and the demo.

One module per part: `process` (a background program and its log), `worker` (a `toonq worker`
process: started from an environment, waited on until ready, stopped), `moto` (an S3 server),
`postgres` (throw-away databases on a PostgreSQL server), `server` (a server run for a while) and
`deployment`, which composes them: a database, a queue, a bucket, a client and workers.
"""
