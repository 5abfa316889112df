"""A fixed, deterministic fleet for the TUI tests (figures as real nodes of each class report)."""

from __future__ import annotations

from edgebox.tui.snapshot import FleetSnapshot, ModelLoad, NodeSnapshot

T0 = 1_790_000_000.0
GIB = 1 << 30


def fleet(t: float = T0, spark_rate: float = 41.5) -> FleetSnapshot:
    return FleetSnapshot(
        taken_at=t,
        nodes=(
            NodeSnapshot(
                name="spark",
                id="n-spark",
                url="http://10.0.0.2:8080",
                status="online",
                hw_class="nvidia-dgx-spark",
                accelerators=("NVIDIA GB10",),
                memory_used=61 * GIB,
                memory_total=128 * GIB,
                memory_unified=True,
                utilization_pct=87.0,
                temperature_c=64.0,
                power_w=92.0,
                cpu_pct=12.0,
                bandwidth_gbps=273.0,
                models=(
                    ModelLoad(
                        name="llama-3.1-8b",
                        running=3,
                        queued=2,
                        slots=4,
                        tokens_per_s=spark_rate,
                        size_bytes=4_920_000_000,
                        fast_path="llamacpp: CUDA build, unified memory",
                    ),
                    ModelLoad(
                        name="smollm2-135m",
                        running=0,
                        queued=0,
                        slots=8,
                        tokens_per_s=0.0,
                        size_bytes=270_000_000,
                    ),
                ),
                tokens_per_s=spark_rate,
                p50_ttft_s=0.182,
                last_seen=t - 1,
            ),
            NodeSnapshot(
                name="rtx",
                id="n-rtx",
                url="http://10.0.0.3:8080",
                status="online",
                hw_class="nvidia-gpu",
                accelerators=("NVIDIA RTX PRO 6000",),
                memory_used=20 * GIB,
                memory_total=96 * GIB,
                utilization_pct=35.0,
                temperature_c=51.0,
                power_w=210.0,
                cpu_pct=4.0,
                bandwidth_gbps=1792.0,
                draining=True,
                models=(
                    ModelLoad(
                        name="qwen2.5-7b",
                        running=1,
                        queued=0,
                        slots=4,
                        tokens_per_s=120.0,
                        size_bytes=4_680_000_000,
                    ),
                ),
                tokens_per_s=120.0,
                last_seen=t - 2,
            ),
            NodeSnapshot(
                name="mac",
                id="n-mac",
                status="offline",
                via="hub",
                hw_class="apple-silicon",
                accelerators=("Apple M2 Ultra",),
                last_seen=t - 600,
            ),
            NodeSnapshot(
                name="http://127.0.0.1:9",
                id="http://127.0.0.1:9",
                url="http://127.0.0.1:9",
                status="unreachable",
                error="cannot connect",
            ),
        ),
    )
