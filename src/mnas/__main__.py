from mnas.cli.app import main

main()
