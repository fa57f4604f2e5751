

c1lamp-1"{"power":"on"}
&
c2
lamp-1
lamp-2"{"level":3}8Ð

c3group:lights0è@

c4	group:all""ping"

c5thermo-1""00ff10"

c6toaster"{}

c7
group:nopec1c3