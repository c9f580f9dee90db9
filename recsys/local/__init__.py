"""Local infrastructure: a Kafka broker from Maven Central jars, a standalone Flink cluster,
the contract's topics, the job in a child process, the one stack harness that ties them
together for tests, benchmarks and evaluation, and the demo that ``make run`` starts."""
