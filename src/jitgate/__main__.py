from jitgate.cli import main

main()
