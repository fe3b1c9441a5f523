from mnas.cli import main

main()
