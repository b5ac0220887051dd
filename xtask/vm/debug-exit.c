/* Tell QEMU the guest's exit status and end the VM.
 *
 * `cargo xtask vm-test` starts QEMU with
 * `-device isa-debug-exit,iobase=0xf4,iosize=0x04`: a write of N to that
 * I/O port makes QEMU exit at once with status N*2+1, the only way a
 * result leaves the guest apart from the serial console. Debian's cloud
 * kernels have no /dev/port, so this takes the port with ioperm().
 * Built static with musl-gcc on the host. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/io.h>

int main(int argc, char **argv)
{
	unsigned int code = argc > 1 ? (unsigned int)strtoul(argv[1], NULL, 10) : 1;

	if (ioperm(0xf4, 4, 1) != 0) {
		perror("debug-exit: ioperm(0xf4)");
		return 1;
	}
	outl(code, 0xf4);
	/* Only reached without the isa-debug-exit device. */
	fprintf(stderr, "debug-exit: QEMU did not stop (no isa-debug-exit device?)\n");
	return 1;
}
