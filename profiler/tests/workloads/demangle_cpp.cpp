/* A C++ function in a namespace and a class template: its frame must read
 * geometry::Shape<unsigned long>::area_loop(long), demangled. */
#include "common.h"
namespace geometry {
template <typename T> struct Shape {
	__attribute__((noinline)) static T area_loop(long n) { BURN(n); return (T)sink; }
};
}
int main()
{
	keep(geometry::Shape<unsigned long>::area_loop(400000000L));
	return 0;
}
