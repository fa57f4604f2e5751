

q0	group:all

q1lamp-1

q2	group:all

q3lamp-1

q4	group:all

q5lamp-1

q6	group:all

q7lamp-1

q8	group:all

q9lamp-1