
!
c1{"ok":true}*

lamp-10c2c2"
lamp-1event[1](