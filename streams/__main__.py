"""Run the stylestream CLI with `python -m stylestream.streams`."""

from stylestream.streams.cli import main

main()
