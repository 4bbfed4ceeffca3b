# Sourced by the benchmarks (not run): the bench data and the bench model, made once and kept
# in target/bench. Needs $events; sets bin, out, data and model.
#   bench_data    5M generated events by default: 100k users x 20k items, 8 files, seed 7
#   bench_model   bench_data, and a model of 20 factors trained on it (10 epochs, 2 ranks)
bin=target/release/funksvd
out=target/bench
data=$out/events-$events
model=$out/model-recommend-$events
mkdir -p "$out"

bench_data() {
  if [ ! -e "$data" ]; then
    scripts/mpirun.sh -n 2 "$bin" generate --out "$data" --users 100000 --items 20000 --events "$events" --files 8 --seed 7
  fi
}

bench_model() {
  bench_data
  if [ ! -e "$model/model.json" ]; then
    scripts/mpirun.sh -n 2 "$bin" train --data "$data" --model "$model" --objective explicit --epochs 10 --factors 20
  fi
}
