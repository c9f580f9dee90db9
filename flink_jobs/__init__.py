"""The Flink job, thin glue: the topology (``recsys_job``), Kafka sources and sinks and the
micro-batch operators through the Java gateway (``io``), the Python side of a batch call
(``batch_host``) and the Flink options derived from the settings (``settings``). The only
package that imports pyflink.
"""
