"""The `scalenn` command line: info, demo, bench, compress."""
import argparse
import sys


def _int_list(text: str):
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _bench(args) -> int:
    from . import bench
    from .bench import harness
    try:
        module = bench.load(args.name)
    except ValueError as exc:
        print(f"scalenn bench: {exc}", file=sys.stderr)
        return 2
    harness.set_quick(args.quick)
    report = module.run(args)
    paths = harness.write(report, args.out)
    print(harness.to_markdown(report, harness.machine_info()))
    print("wrote " + ", ".join(paths.values()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scalenn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("info", help="build, CPU features, selected ISA, CUDA/Triton status")

    demo = sub.add_parser("demo", help="run the main job on an embedded default")
    demo.add_argument("--quick", action="store_true", help="a smaller, faster version (tests)")
    demo.add_argument("--out", default="demo_out", help="folder for the report (default demo_out)")

    from .compress import command as compress_command
    compress_command.add_parser(sub)

    from . import bench
    b = sub.add_parser("bench", help="side-by-side benchmarks; tables and plots in --out")
    b.add_argument("name", help="one of: " + ", ".join(bench.available()))
    b.add_argument("--threads", type=_int_list, default=[2, 1],
                   help="comma-separated thread counts (default 2,1)")
    b.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    b.add_argument("--quick", action="store_true", help="fewer shapes (smoke test)")
    b.add_argument("--out", default="benchmarks/results", help="output folder")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "info":
        from .info import main as info_main
        return info_main()
    if args.command == "demo":
        from .demo import main as demo_main
        return demo_main(args)
    if args.command == "bench":
        return _bench(args)
    if args.command == "compress":
        from .compress.command import run as compress_run
        return compress_run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
