from deepmetric.cli import main

main()
