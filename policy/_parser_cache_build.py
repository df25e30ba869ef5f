"""Print policy/_parser_cache_tables.py, the FPL parser's LALR tables built from fpl.lark:

    python -m policy._parser_cache_build > policy/_parser_cache_tables.py
"""

from policy import parser
from policy._parser_cache import module_text

if __name__ == "__main__":
    print(module_text(parser.GRAMMAR, parser.build_from_grammar()), end="")
