#!/usr/bin/env bash
# Install and start what the integration tests need, idempotently:
# Debian's redis-server, prometheus (promtool), prometheus-alertmanager
# (amtool), docker-compose and wrk, and the
# machine's PostgreSQL 15 cluster with a role of the test suite's own. The
# tests start their own redis-server on a port of their own and create (and
# drop) a database per run with that role.
set -euo pipefail

PG_ROLE="${PANIC_METRICS_TEST_PG_ROLE:-panic_metrics_test}"
PG_PASSWORD="${PANIC_METRICS_TEST_PG_PASSWORD:-panic_metrics_test}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
# The monitoring tests: promtool and prometheus, amtool and Alertmanager
# (Debian names its binary prometheus-alertmanager), docker-compose for the
# offline check of docker-compose.yml.
command -v prometheus >/dev/null && command -v promtool >/dev/null || missing+=(prometheus)
command -v prometheus-alertmanager >/dev/null && command -v amtool >/dev/null || missing+=(prometheus-alertmanager)
command -v docker-compose >/dev/null || missing+=(docker-compose)
# The load generator of the live HTTP test (tests/client/test_http_summaries_live.py) and bench/http_cost.py.
command -v wrk >/dev/null || missing+=(wrk)
if [ ${#missing[@]} -gt 0 ]; then
    echo "test-services: installing ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v pg_ctlcluster >/dev/null; then
    echo "test-services: PostgreSQL 15 is not installed on this machine" >&2
    exit 1
fi
if ! pg_lsclusters -h | awk '$1=="15" && $2=="main" {print $4}' | grep -q online; then
    # The server outlives this script: it must not inherit our open descriptors, or a lock
    # held around the suite (`flock /tmp/panic-metrics-suite make test`) is held by
    # PostgreSQL for as long as it runs, and every later suite waits for it forever.
    (
        for fd in /proc/self/fd/*; do
            fd=${fd##*/}
            if [ "$fd" -gt 2 ]; then eval "exec $fd>&-" 2>/dev/null || true; fi
        done
        as_root pg_ctlcluster 15 main start
    )
fi
for _ in $(seq 1 30); do
    as_root su postgres -c "pg_isready -q" && break
    sleep 1
done

as_root su postgres -c "psql -v ON_ERROR_STOP=1 -q" <<SQL
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '${PG_ROLE}') THEN
        CREATE ROLE ${PG_ROLE} LOGIN CREATEDB PASSWORD '${PG_PASSWORD}';
    END IF;
END
\$\$;
SQL
echo "test-services: redis-server $(redis-server --version | awk '{print $3}'), promtool $(promtool --version 2>&1 | awk 'NR==1 {print $3}'), amtool $(amtool --version 2>&1 | awk 'NR==1 {print $3}'), PostgreSQL 15 up, role ${PG_ROLE} ready"
