"""What the test suites share: configs and waiting (support), child processes (processes), the
fault-injecting proxy (faultproxy), the delivery invariants (invariants), OTLP receivers (otlp)."""
