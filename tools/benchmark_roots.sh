# Sourced by the shell scripts that test on the real benchmarks: BENCHMARK_ROOTS holds those of the six standard
# test sets present in ../shared/benchmarks (a folder beside the repository; none when it is absent).
BENCHMARK_ROOTS=()
for name in IIIT5k_3000 SVT IC13_857 IC15_2077 SVTP CUTE80; do
  if [ -f "../shared/benchmarks/$name/data.mdb" ]; then BENCHMARK_ROOTS+=("../shared/benchmarks/$name"); fi
done
