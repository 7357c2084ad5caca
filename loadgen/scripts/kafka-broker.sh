#!/usr/bin/env bash
# Starts a single-node KRaft Apache Kafka broker for `--via kafka` runs of the
# loadgen, from the distribution the test harness (corecast-testkit) caches
# under target/kafka-dist (run any Kafka test once to download it).
#
#   loadgen/scripts/kafka-broker.sh start [port]   # default 9092; prints the pid
#   loadgen/scripts/kafka-broker.sh stop
#
# The broker auto-creates topics (one partition), so the loadgen's first
# Metadata request creates its topic. Data lives in $KAFKA_BENCH_DIR
# (default /tmp/corecast-kafka-bench), wiped on start; GC pauses are logged
# to $KAFKA_BENCH_DIR/gc.log.
#
# Tuned for latency on a small shared box (see docs/benchmarks.md, "Kafka
# ingest"); each knob can be overridden:
#   KAFKA_BENCH_HEAP     heap flags   (default: fixed 2 GiB heap, pre-touched, with a
#                                      512 MiB young gen: a young collection's pause
#                                      grows with the survivors, not with the young
#                                      gen's size, so a large one means a few seconds
#                                      between pauses of about the same length, and
#                                      fewer records delayed by one; metaspace sized
#                                      so that start-up needs no full collection)
#   KAFKA_BENCH_GC       GC flags     (default: serial collector: no concurrent GC
#                                      threads competing for the 2 cores; ZGC,
#                                      -XX:+UseZGC with the heap flags minus -Xmn,
#                                      trims the 14-19 ms young pauses from the
#                                      20k msg/s tail but not the 100k msg/s p99)
#   KAFKA_BENCH_THREADS  num.network.threads / num.io.threads (default 1; 2 made
#                                      the 100k msg/s p50 ~10 ms instead of 1.5-3.6)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
dist=${KAFKA_DIST:-$root/target/kafka-dist/lib}
dir=${KAFKA_BENCH_DIR:-/tmp/corecast-kafka-bench}
cmd=${1:-start}
port=${2:-9092}
cport=$((port + 1))
heap=${KAFKA_BENCH_HEAP:--Xms2g -Xmx2g -Xmn512m -XX:+AlwaysPreTouch -XX:MetaspaceSize=128m}
gc=${KAFKA_BENCH_GC:--XX:+UseSerialGC}
threads=${KAFKA_BENCH_THREADS:-1}

case "$cmd" in
stop)
	if [[ -f $dir/pid ]]; then
		kill "$(cat "$dir/pid")" 2>/dev/null || true
		rm -f "$dir/pid"
	fi
	exit 0
	;;
start) ;;
*)
	echo "usage: $0 start [port] | stop" >&2
	exit 2
	;;
esac

[[ -d $dist ]] || {
	echo "no Kafka distribution at $dist: run a Kafka test once (cargo test --test kafka_*) or set KAFKA_DIST" >&2
	exit 1
}
command -v java >/dev/null || {
	echo "java not found (apt-get install openjdk-17-jre-headless)" >&2
	exit 1
}

rm -rf "$dir"
mkdir -p "$dir/data"
cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
num.network.threads=$threads
num.io.threads=$threads
# No fsync per message (the default too): the page cache is the log.
log.flush.interval.messages=9223372036854775807
EOF
cat >"$dir/log4j2.properties" <<EOF
rootLogger.level=INFO
rootLogger.appenderRef.file.ref=file
appender.file.type=File
appender.file.name=file
appender.file.fileName=$dir/broker.log
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=[%d] %p %m (%c)%n
EOF

# shellcheck disable=SC2206 # flag lists split on spaces on purpose
java_cmd=(java $heap $gc "-Xlog:gc:file=$dir/gc.log" -Djava.awt.headless=true
	"-Dlog4j2.configurationFile=$dir/log4j2.properties" -cp "$dist/*")
"${java_cmd[@]}" kafka.tools.StorageTool format -t "$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | cut -c1-22)" \
	-c "$dir/server.properties" >"$dir/format.log" 2>&1
nohup "${java_cmd[@]}" kafka.Kafka "$dir/server.properties" >"$dir/stdout.log" 2>&1 &
echo $! >"$dir/pid"
for _ in $(seq 1 120); do
	if (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
		echo "kafka broker ready on 127.0.0.1:$port (pid $(cat "$dir/pid"), log $dir/broker.log)"
		exit 0
	fi
	sleep 0.5
done
echo "broker did not open port $port within 60 s; see $dir/broker.log" >&2
exit 1
