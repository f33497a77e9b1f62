#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for SECONDS each, one after the other, and prints one row
# per target: target, execs, execs/s, crashes. Each run starts from a copy of the committed
# seed corpus (fuzz/corpus/TARGET) in a temporary directory, so nothing it generates lands in
# the tree; a crashing, hanging or runaway input is copied to fuzz/artifacts/TARGET/.
# Exits non-zero when a target fails to build or any run finds a crash.
#
#   ops/fuzz.sh SECONDS [TARGET...]
#
# All targets are built once (`cargo fuzz build`, stable toolchain: no sanitizer, with debug
# assertions so that arithmetic overflow panics as it does in tests); installs cargo-fuzz when
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:?usage: ops/fuzz.sh SECONDS [TARGET...]}"
shift
case "$seconds" in
'' | *[!0-9]*)
	echo "SECONDS must be a whole number, got '$seconds'" >&2
	exit 2
	;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
	echo "installing cargo-fuzz..." >&2
	cargo install cargo-fuzz --locked --quiet
fi

# The flags every build and run use; `cargo fuzz run` with other flags would rebuild.
build_flags=(-s none -a)
if ! (cd fuzz && cargo fuzz build "${build_flags[@]}"); then
	echo "fuzz targets failed to build" >&2
	exit 1
fi

if (($# > 0)); then
	targets=("$@")
else
	mapfile -t targets < <(cd fuzz && cargo fuzz list)
fi
triple="$(rustc -vV | sed -n 's/^host: //p')"
bin_dir="fuzz/target/$triple/release"

# Longest input per target: a little over the largest seed. Longer inputs reach nothing new
# and make every run slower (a config of 2 KB parses ten times slower than one of 200 bytes).
max_len() {
	case "$1" in
	audit_lines | inspect | config) echo 2048 ;;
	*) echo 1024 ;;
	esac
}

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

failed=0
printf '%-12s %12s %10s %8s\n' target execs execs/s crashes
for t in "${targets[@]}"; do
	corpus="$work/$t/corpus"
	artifacts="$work/$t/artifacts"
	mkdir -p "$corpus" "$artifacts"
	if [[ -d "fuzz/corpus/$t" ]]; then
		cp -r "fuzz/corpus/$t/." "$corpus/"
	fi
	set +e
	# -timeout: an input that takes 10 s is a hang; -malloc_limit_mb: one allocation of
	# 512 MB is an unbounded one.
	"$bin_dir/$t" "$corpus" -max_total_time="$seconds" -max_len="$(max_len "$t")" \
		-timeout=10 -malloc_limit_mb=512 \
		-rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$artifacts/" \
		>"$work/$t/log" 2>&1
	status=$?
	set -e
	execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t/log" | tail -n1)"
	rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/$t/log" | tail -n1)"
	found=("$artifacts"/*)
	[[ -e "${found[0]}" ]] || found=()
	crashes=${#found[@]}
	if ((status != 0 && crashes == 0)); then
		crashes=1 # the run itself failed; its log says why
	fi
	printf '%-12s %12s %10s %8s\n' "$t" "${execs:-?}" "${rate:-?}" "$crashes"
	if ((crashes > 0)); then
		failed=1
		mkdir -p "fuzz/artifacts/$t"
		if ((${#found[@]} > 0)); then
			cp "${found[@]}" "fuzz/artifacts/$t/"
		fi
		echo "  $t: exit status $status; log tail:" >&2
		tail -n 25 "$work/$t/log" | sed 's/^/    /' >&2
		for f in "${found[@]}"; do
			echo "  reproduce: (cd fuzz && cargo fuzz run ${build_flags[*]} $t artifacts/$t/$(basename "$f"))" >&2
		done
	fi
done
exit "$failed"
