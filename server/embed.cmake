# Turns a file into a C byte array so engram-server needs no data files at run
# time: cmake -DIN=file -DOUT=file.c -DNAME=symbol -P server/embed.cmake
file(READ ${IN} hex HEX)
string(LENGTH "${hex}" n)
math(EXPR len "${n} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," arr "${hex}")
file(WRITE ${OUT} "/* Generated from ${IN} by server/embed.cmake; do not edit. */\n"
  "#include <stddef.h>\nconst unsigned char ${NAME}[] = {${arr} 0};\nconst size_t ${NAME}_len = ${len};\n")
