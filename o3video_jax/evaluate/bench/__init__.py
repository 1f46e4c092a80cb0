"""One module per benchmark, each defining `BENCHMARK` (a `spec.Benchmark`); `registry` lists
them. `multiple_choice` holds what the multiple-choice benchmarks share (voting, records)."""
