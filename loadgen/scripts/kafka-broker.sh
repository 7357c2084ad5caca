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
# (default /tmp/corecast-kafka-bench), wiped on start.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
dist=${KAFKA_DIST:-$root/target/kafka-dist/lib}
dir=${KAFKA_BENCH_DIR:-/tmp/corecast-kafka-bench}
cmd=${1:-start}
port=${2:-9092}
cport=$((port + 1))

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
num.network.threads=2
num.io.threads=2
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

java_cmd=(java -Xms256m -Xmx1g -XX:+UseSerialGC -Djava.awt.headless=true
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
