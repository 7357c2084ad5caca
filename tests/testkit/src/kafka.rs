//! Real Apache Kafka (KRaft, single node) for tests.
