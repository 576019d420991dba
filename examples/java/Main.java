import dev.fmrl.FmrlException;
import dev.fmrl.Recommendations;
import dev.fmrl.Recommender;
import dev.fmrl.Session;

/**
 * The fmrl runtime from Java: open a bundle, replay a user's events, print the top-10 after each one,
 * save the session's bytes and restore them.
 *
 *   java -Djava.library.path=build/fmrl -cp build/fmrl/fmrl.jar:. Main bundles/phone-lowmem ITEM [ITEM...]
 */
public final class Main {
  public static void main(String[] args) throws Exception {
    if (args.length < 2) {
      System.err.println("usage: Main BUNDLE (a directory or NAME.fmrlb) ITEM [ITEM...]");
      System.exit(2);
    }
    try (Recommender rec = Recommender.open(args[0]); Session session = rec.newSession()) {
      System.out.printf("fmrl_runtime %s: %d items, s = %d, k_max = %d, %d state bytes%n", Recommender.version(),
                        rec.numItems(), rec.granularity(), rec.kMax(), rec.stateBytes());
      for (int i = 1; i < args.length; i++) {
        if (!session.observe(args[i])) System.out.println(args[i] + ": unknown item, skipped");
      }
      Recommendations top = session.recommend(10, true);  // the best 10 not seen yet
      for (int r = 0; r < top.size(); r++) System.out.printf("%2d. %s  %.4f%n", r + 1, top.id(r), top.score(r));
      byte[] saved = session.toBytes();  // what onPause would store; Python's Session.to_bytes() format
      try (Session again = rec.restore(saved)) {
        System.out.println("restored: " + again.observed() + " events, same top-10: "
                           + again.recommend(10, true).equals(top));
      }
    } catch (FmrlException e) {
      System.err.println("error (" + e.status() + "): " + e.getMessage());
      System.exit(1);
    }
  }
}
