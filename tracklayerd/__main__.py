from tracklayerd.cli import main

main()
